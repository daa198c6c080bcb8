#!/bin/bash
# The part every slurm/<stage>.sbatch shares. Sourced with STAGE set; "$@" are Hydra overrides.
#
# 1. Finds the repository (the folder sbatch was run from, or SVD_ROOT) and sources the cluster env file
#    (SVD_SLURM_ENV, default slurm/env.sh: environment activation, modules, SVD_OVERRIDES such as paths=<cluster>).
# 2. Composes the config once on the batch host, so a typo or an unknown choice fails in seconds with the reason
#    in the job log, before the long run starts.
# 3. srun starts one task per GPU (or per CPU task); Lightning reads ranks from the SLURM environment. The stage
#    resumes by itself (resume=auto): after a requeue (preemption, time limit, scontrol requeue) the job
#    continues from its newest checkpoint. SIGUSR1 from --signal makes it checkpoint and requeue itself
#    (train/preemption.py); a finished stage does not requeue.
set -euo pipefail

source "${SVD_ROOT:-${SLURM_SUBMIT_DIR:-$(pwd)}}/slurm/setup.sh"
read -r -a EXTRA <<< "${SVD_OVERRIDES:-}"

echo "[svd-slurm] job ${SLURM_JOB_ID:-none} stage ${STAGE} restart ${SLURM_RESTART_COUNT:-0}" \
    "nodes ${SLURM_JOB_NODELIST:-?} tasks/node ${SLURM_NTASKS_PER_NODE:-1} overrides: ${EXTRA[*]} $*"

"$PYTHON" -m train "stage=${STAGE}" "${EXTRA[@]}" "$@" --cfg job > /dev/null \
    || fail "the config for stage ${STAGE} does not compose (reason above); nothing was trained"

NODES="${SLURM_JOB_NUM_NODES:-1}"
TASKS="${SLURM_NTASKS_PER_NODE:-1}"
if [[ "${SLURM_GPUS_ON_NODE:-0}" != "0" ]]; then
    DEFAULTS=(trainer=gpu)
else
    DEFAULTS=(trainer=cpu)
fi
DEFAULTS+=("trainer.num_nodes=${NODES}" "trainer.devices=${TASKS}")
if (( NODES * TASKS > 1 )); then
    DEFAULTS+=(strategy=ddp)
fi

# Later overrides win: the user's (and the env file's) come after our defaults.
srun --kill-on-bad-exit=1 "$PYTHON" -m train "stage=${STAGE}" "${DEFAULTS[@]}" "${EXTRA[@]}" "$@"
