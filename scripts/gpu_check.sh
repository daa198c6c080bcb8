#!/usr/bin/env bash
# The GPU check of issue 15 on one 80 GB GPU (H100 / A100), about 5 to 8 minutes:
#
#   scripts/gpu_check.sh [--out outputs/gpu_check.json] [--time-limit 470] [--parts NAME ...] [key=value ...]
#
# runs scripts/gpu_check.py (see its docstring): the full-size SVD UNet training step at 14x576x1024 bf16 with
# activation checkpointing on and off (samples/s, MFU, peak memory), the 25-frame fit at batch 1, a 20-step
# ZeRO-2 stage at tiny size, the planner's prediction against the measured peaks, and pytest -m gpu. It writes
# ONE JSON file (rewritten after each part, so a cut-off run keeps what it measured) and exits 0 when no part
# failed, 1 when one did, 2 without a CUDA device. Python: $PYTHON, else the repo's .venv, else python3.
# GPU_CHECK_TIMEOUT (default 540 s) is a hard stop around the whole run.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
cd "$ROOT"
exec timeout --kill-after=10 "${GPU_CHECK_TIMEOUT:-540}" "$PYTHON" scripts/gpu_check.py "$@"
