#!/bin/bash
# Sourced by every sbatch script and by the submit scripts (pipeline.sh, curate.sh, with SVD_ROOT set): finds the
# repository (the folder sbatch was run from, or SVD_ROOT), cds there
# and sources the cluster env file (SVD_SLURM_ENV, default slurm/env.sh). Sets ROOT and PYTHON, defines fail().
fail() {
    echo "[svd-slurm] ERROR: $*" >&2
    exit 1
}

ROOT="${SVD_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}"
[[ -f "$ROOT/train/__main__.py" ]] || fail "no repository at $ROOT: run sbatch from the repository root or set SVD_ROOT"
cd "$ROOT"
ENV_FILE="${SVD_SLURM_ENV:-$ROOT/slurm/env.sh}"
[[ -f "$ENV_FILE" ]] || fail "env file $ENV_FILE not found: copy slurm/env.example.sh to slurm/env.sh and edit it, or set SVD_SLURM_ENV"
# shellcheck source=/dev/null
source "$ENV_FILE"
PYTHON="${SVD_PYTHON:-python}"
