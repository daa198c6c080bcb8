# Cluster settings for slurm/*.sbatch and slurm/pipeline.sh. Copy to slurm/env.sh (git-ignored) and edit.
# Sourced on the batch host before anything runs, and by pipeline.sh before it submits.

# Where sbatch sends the jobs (sbatch reads these variables; command-line flags still win).
export SBATCH_PARTITION="${SBATCH_PARTITION:-gpu}"
# export SBATCH_ACCOUNT=my-account
# export SBATCH_QOS=normal

# The Python environment, e.g. modules and a venv.
# module load cuda/12.4
source "${SVD_ROOT:-$PWD}/.venv/bin/activate"

# Hydra overrides added to every stage of every job: cluster paths (conf/paths/<cluster>.yaml), wandb online, ...
export SVD_OVERRIDES="${SVD_OVERRIDES:-}"
# export SVD_OVERRIDES="paths=mycluster logger.wandb_mode=online"

# Hydra overrides added to every curation job (slurm/curate.sh): model files for offline nodes, ...
export SVD_CURATE_OVERRIDES="${SVD_CURATE_OVERRIDES:-}"
# export SVD_CURATE_OVERRIDES="annotate.clip.pretrained=/models/open_clip_vit_l14.bin"

# NCCL and threads.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-8}}"
