#!/bin/bash
# Submit the stages in order, each waiting for the previous one to succeed (--dependency=afterok), and print
# "<stage> <job id>" per line. Each stage starts from the previous stage's export by its own config
# (stage.init.from_stage), within one run (paths.run_name). A failed stage cancels the rest of the chain.
#
#   slurm/pipeline.sh [--stages "image_pretrain video_pretrain ..."] [--sbatch-args "--time=4:00:00 ..."]
#                     [--logs DIR] [hydra overrides for every stage ...]
#
# Every stage's config is composed before anything is submitted: a typo or an unknown stage submits nothing.
set -euo pipefail

fail() {
    echo "[svd-pipeline] ERROR: $*" >&2
    exit 1
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STAGES="image_pretrain video_pretrain video_finetune img2vid_finetune"
SBATCH_ARGS=""
LOGS=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --stages) STAGES="$2"; shift 2 ;;
        --sbatch-args) SBATCH_ARGS="$2"; shift 2 ;;
        --logs) LOGS="$2"; shift 2 ;;
        -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
        *) break ;;
    esac
done

export SVD_ROOT="$ROOT"  # the jobs inherit it; setup.sh cds there and sources the env file (sets PYTHON)
# shellcheck source=slurm/setup.sh
source "$ROOT/slurm/setup.sh"
read -r -a EXTRA <<< "${SVD_OVERRIDES:-}"
read -r -a SB <<< "$SBATCH_ARGS"

for stage in $STAGES; do
    [[ -f "slurm/${stage}.sbatch" ]] || fail "unknown stage '${stage}': choose from $(cd slurm && ls ./*.sbatch | sed 's|./||; s|.sbatch||' | tr '\n' ' ')"
    "$PYTHON" -m train "stage=${stage}" "${EXTRA[@]}" "$@" --cfg job > /dev/null \
        || fail "the config of stage ${stage} does not compose (reason above); nothing submitted"
done

if [[ -n "$LOGS" ]]; then
    mkdir -p "$LOGS"
    SB+=("--output=${LOGS}/%x-%j.out")
fi
previous=""
for stage in $STAGES; do
    dependency=()
    if [[ -n "$previous" ]]; then
        dependency=("--dependency=afterok:${previous}" "--kill-on-invalid-dep=yes")
    fi
    job=$(sbatch --parsable "${dependency[@]}" "${SB[@]}" "slurm/${stage}.sbatch" "$@")
    job="${job%%;*}"
    echo "${stage} ${job}"
    previous="$job"
done
