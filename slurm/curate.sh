#!/bin/bash
# Submit the curation as a SLURM job array (annotate, one task per slice of the inputs) plus a merge job that
# waits for the whole array (afterok), and print "annotate <array job id>" and "merge <job id>".
#
#   slurm/curate.sh --tasks K [--sbatch-args "--time=12:00:00 ..."] [--logs DIR] input=<videos|shards> out=<folder> [overrides ...]
#
# The config is composed first: a typo submits nothing. Re-running after failures redoes only unfinished units.
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
        --tasks) TASKS="$2"; shift 2 ;;
        --sbatch-args) SBATCH_ARGS="$2"; shift 2 ;;
        --logs) LOGS="$2"; shift 2 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) break ;;
    esac
done
[[ "$TASKS" =~ ^[1-9][0-9]*$ ]] || fail "--tasks K (the number of array tasks, >= 1) is required"

ENV_FILE="${SVD_SLURM_ENV:-$ROOT/slurm/env.sh}"
[[ -f "$ENV_FILE" ]] || fail "env file $ENV_FILE not found: copy slurm/env.example.sh to slurm/env.sh and edit it, or set SVD_SLURM_ENV"
export SVD_ROOT="$ROOT"
# shellcheck source=/dev/null
source "$ENV_FILE"
PYTHON="${SVD_PYTHON:-python}"
read -r -a EXTRA <<< "${SVD_CURATE_OVERRIDES:-}"
read -r -a SB <<< "$SBATCH_ARGS"
cd "$ROOT"

"$PYTHON" -m data.curation "${EXTRA[@]}" "$@" --cfg job > /dev/null \
    || fail "the curation config does not compose (reason above); nothing submitted"

if [[ -n "$LOGS" ]]; then
    mkdir -p "$LOGS"
fi
ARRAY_LOG=()
MERGE_LOG=()
if [[ -n "$LOGS" ]]; then
    ARRAY_LOG=("--output=${LOGS}/%x-%A_%a.out")
    MERGE_LOG=("--output=${LOGS}/%x-%j.out")
fi
array=$(sbatch --parsable --array="0-$((TASKS - 1))" "${SB[@]}" "${ARRAY_LOG[@]}" slurm/curate.sbatch "$@")
array="${array%%;*}"
echo "annotate ${array}"
merge=$(sbatch --parsable --dependency="afterok:${array}" --kill-on-invalid-dep=yes "${SB[@]}" "${MERGE_LOG[@]}" \
    slurm/curate_merge.sbatch "$@")
echo "merge ${merge%%;*}"
