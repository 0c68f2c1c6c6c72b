"""TTS: two-stage training. Stage 1 with every skip for M epochs, then the weights
move into the no-last-stage-skip model, which trains N more (paper: M=5, N=95).

  python launch.py --config=configs/tts.py --workdir=/ckpt/r34_tts \\
      --config.model.name=resnet34 --config.data.manual_dir=/data/facescrub

Demo, both stages on MNIST-5k on CPU:

  python launch.py --config=configs/tts.py:demo --workdir=workdir/tts_demo

The learning-rate schedule spans both stages by default ('continue': milestones
75 and 90 of 100 epochs fall at stage-2 epochs 70 and 85); 'restart' replays it
in stage 2. Each stage starts with a fresh Adam state. A killed run resumes in
the stage it died in (mi_jax/defenses/tts.py).
"""

from configs import baseline, common
from mi_jax import defenses


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, tiny=False, epochs=8, stage1_epochs=0)
  config = defenses.defend(
      baseline.get_config(','.join(n for n in ('demo', 'tiny') if arg[n]) + f',epochs={arg.epochs}'), 'tts'
  )  # stage 1: every skip; stage 2: the RoLSS model; M = 5% of the epochs
  if arg.stage1_epochs:
    config.tts.stage1_epochs = arg.stage1_epochs
  return config
