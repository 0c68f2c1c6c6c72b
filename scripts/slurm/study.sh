#!/bin/bash
# The paper's study fanned out over a SLURM cluster: the evaluation model, then one array task per cell
# (train its target, attack it, evaluate the attack), then the gather that writes the table and figures.
#
#   scripts/slurm/study.sh /ckpt/paper --config.classifier.data.manual_dir=/data/facescrub ...
#
# The first argument is the study's workdir (on a file system every node shares); the rest are absl overrides
# of configs/paper.py, passed to every step alike (the study's config must be the same in all of them). Set
# STUDY_CONFIG for another preset (e.g. configs/paper.py:sweeps=ssf_k) and SBATCH_ARGS for your partition,
# account and time limits. Cells are independent and resumable: resubmitting the script reruns only what is
# missing, and a gather lists what is not finished yet.
set -euo pipefail
workdir=${1:?usage: study.sh WORKDIR [--config.FIELD=VALUE ...]}
shift
config=${STUDY_CONFIG:-configs/paper.py}
gpus=${GPUS_PER_TASK:-1}
cd "$(dirname "$0")/../.."  # the repository root, where launch.py is

study() {  # the command line of the study with study.tasks=$1 (quoted for sbatch --wrap)
  printf '%q ' python launch.py --config="$config" --workdir="$workdir" --config.study.tasks="$1" "${@:2}"
}

# How many tasks the study has (one per distinct cell directory), from the same config.
tasks=$(python launch.py --config="$config" --workdir="$workdir" --config.study.tasks=list "$@" 2>&1 \
  | sed -n 's/.*The study has \([0-9]*\) tasks.*/\1/p')
[[ -n "$tasks" ]] || { echo "could not list the study's tasks: check the config and overrides" >&2; exit 1; }
echo "The study has $tasks tasks."

evaluation=$(sbatch --parsable ${SBATCH_ARGS:-} --job-name=mi-eval --gpus="$gpus" \
  --wrap="$(study evaluation "$@")")
# Array task i of n runs tasks i, i+n, ...: --array=0-$((tasks - 1)) gives one task each; a smaller array
# (or a %limit) spreads them over fewer jobs.
cells=$(sbatch --parsable ${SBATCH_ARGS:-} --job-name=mi-cells --gpus="$gpus" --array="0-$((tasks - 1))" \
  --dependency="afterok:$evaluation" --wrap="$(study slurm "$@")")
gather=$(sbatch --parsable ${SBATCH_ARGS:-} --job-name=mi-gather --gpus="$gpus" \
  --dependency="afterany:$cells" --wrap="$(study gather "$@")")
echo "Submitted: evaluation model $evaluation, cells $cells (array of $tasks), gather $gather."
