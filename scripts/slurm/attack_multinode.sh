#!/bin/bash
# The PPA attack across nodes: one process per node (srun); the latents are split over every GPU of every node
# (attack.batch_size per device), and only process 0 writes. With the same global batch the final images equal
# those of one process (tests/test_multiprocess_attack.py); a killed attack resumes when resubmitted.
#
#   sbatch --nodes=2 scripts/slurm/attack_multinode.sh /shared/ckpt/attack_tts \
#       --config.target.workdir=/shared/ckpt/tts_resnet152 --config.generator.dir=/shared/ckpt/generators/ffhq
#
# One cell of the study across nodes is the same with configs/paper.py and --config.study.tasks=<index>.
#SBATCH --job-name=mi-attack
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=16
set -euo pipefail
workdir=${1:?usage: attack_multinode.sh WORKDIR [--config.FIELD=VALUE ...]}
shift
cd "${SLURM_SUBMIT_DIR:-.}"
srun --ntasks-per-node=1 python launch.py --config="${ATTACK_CONFIG:-configs/attack_ppa.py}" --workdir="$workdir" "$@"
