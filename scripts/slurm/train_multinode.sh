#!/bin/bash
# One target trained across nodes: one process per node (srun), each using every GPU of its node;
# jax.distributed finds the coordinator from SLURM's variables (mi_jax/multihost.py). Any job config works the
# same way, e.g. configs/tts.py or configs/baseline.py with absl overrides:
#
#   sbatch --nodes=4 scripts/slurm/train_multinode.sh configs/tts.py /shared/ckpt/tts_resnet152 \
#       --config.model.name=resnet152 --config.data.manual_dir=/data/facescrub
#
# Keep config.num_devices=0 (every device of every node) and the workdir on a shared file system; only process
# 0 writes checkpoints and logs. A killed job resumes from its last checkpoint when resubmitted.
#SBATCH --job-name=mi-train
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
set -euo pipefail
config=${1:?usage: train_multinode.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]}
workdir=${2:?usage: train_multinode.sh CONFIG WORKDIR [--config.FIELD=VALUE ...]}
shift 2
cd "${SLURM_SUBMIT_DIR:-.}"
srun --ntasks-per-node=1 python launch.py --config="$config" --workdir="$workdir" "$@"
