#!/bin/bash
# Submit the curation as a SLURM job array (annotate, one task per slice of the inputs) plus a merge job that
# waits for the whole array (afterok), and print "annotate <array job id>" and "merge <job id>".
#
#   slurm/curate.sh --tasks K [--sbatch-args "--time=12:00:00 ..."] [--logs DIR] input=<videos|shards> out=<folder> [overrides ...]
#
# The config is composed and checked first (keys, choices, filters, that the input exists): a typo submits nothing.
# Re-running after failures redoes only unfinished units.
set -euo pipefail

fail() {
    echo "[svd-curate] ERROR: $*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TASKS=""
SBATCH_ARGS=""
LOGS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tasks|--sbatch-args|--logs)
            [[ $# -ge 2 ]] || fail "$1 needs a value"
            case "$1" in
                --tasks) TASKS="$2" ;;
                --sbatch-args) SBATCH_ARGS="$2" ;;
                --logs) LOGS="$2" ;;
            esac
            shift 2 ;;
        --tasks=*) TASKS="${1#*=}"; shift ;;
        --sbatch-args=*) SBATCH_ARGS="${1#*=}"; shift ;;
        --logs=*) LOGS="${1#*=}"; shift ;;
        -h|--help) sed -n '2,9p' "$0"; exit 0 ;;
        --*) fail "unknown option $1 (options: --tasks K, --sbatch-args \"...\", --logs DIR; then Hydra overrides)" ;;
        *) break ;;
    esac
done
[[ "$TASKS" =~ ^[1-9][0-9]*$ ]] || fail "--tasks K (the number of array tasks, an integer >= 1) is required; got '${TASKS}'"
for arg in "$@"; do
    # The array tasks run step=annotate part=I/K and the merge job step=merge: set here, these would be ignored.
    [[ "$arg" =~ ^[+~]*(step|part)= ]] && fail "'$arg': curate.sh sets step and part itself (part I/K from the array task)"
done

export SVD_ROOT="$ROOT"  # the jobs inherit it; setup.sh cds there and sources the env file (sets PYTHON)
# shellcheck source=slurm/setup.sh
source "$ROOT/slurm/setup.sh"
read -r -a EXTRA <<< "${SVD_CURATE_OVERRIDES:-}"
read -r -a SB <<< "$SBATCH_ARGS"

# Compose the config as the jobs will (Hydra: keys and choices; the dataclasses: values and filters) and list the
# input units, so a mistake fails here in seconds instead of in every array task after the queue wait.
"$PYTHON" - "$TASKS" "${EXTRA[@]}" "$@" <<'PY' || fail "the curation config or its input is not usable (reason above); nothing submitted"
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data.curation.config import config_from_hydra, register_schema
from data.curation.inputs import list_units

tasks, overrides = int(sys.argv[1]), sys.argv[2:]
try:
    register_schema()
    with initialize_config_dir(config_dir=str(Path("conf/curate").resolve()), version_base="1.3"):
        dcfg = compose("curate", overrides=overrides)
    missing = [key for key in ("input", "out") if OmegaConf.is_missing(dcfg, key)]
    if missing:
        raise ValueError(f"set {' and '.join(k + '=...' for k in missing)}")
    units = list_units(list(config_from_hydra(dcfg).input))
except Exception as e:  # Hydra's composition errors and our ValueErrors: the message is the explanation
    cause = str(e.__cause__).splitlines()[0] if e.__cause__ is not None and str(e.__cause__) else ""
    cause = f" ({cause})" if cause and cause not in str(e) else ""
    print(f"error: {e}{cause}", file=sys.stderr)
    sys.exit(2)
note = f"; {tasks - len(units)} task(s) will have nothing to do" if tasks > len(units) else ""
print(f"[svd-curate] {len(units)} input unit(s) over {tasks} array task(s){note}", file=sys.stderr)
PY

ARRAY_LOG=()
MERGE_LOG=()
if [[ -n "$LOGS" ]]; then
    mkdir -p "$LOGS"  # SLURM does not create the folder of --output
    ARRAY_LOG=("--output=${LOGS}/%x-%A_%a.out")
    MERGE_LOG=("--output=${LOGS}/%x-%j.out")
fi
array=$(sbatch --parsable --array="0-$((TASKS - 1))" "${SB[@]}" "${ARRAY_LOG[@]}" slurm/curate.sbatch "$@") \
    || fail "sbatch refused the annotate array (reason above); nothing submitted"
array="${array%%;*}"
echo "annotate ${array}"
merge=$(sbatch --parsable --dependency="afterok:${array}" --kill-on-invalid-dep=yes "${SB[@]}" "${MERGE_LOG[@]}" \
    slurm/curate_merge.sbatch "$@") \
    || fail "sbatch refused the merge job (reason above); the annotate array ${array} is queued: cancel it" \
        "(scancel ${array}) or submit slurm/curate_merge.sbatch with --dependency=afterok:${array} yourself"
echo "merge ${merge%%;*}"
