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

import ml_collections

from configs import baseline, common


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, tiny=False, epochs=8, stage1_epochs=0)
  config = baseline.get_config(','.join(n for n in ('demo', 'tiny') if arg[n]) + f',epochs={arg.epochs}')
  config.job = 'tts'
  config.model.skip = (1.0, 1.0, 1.0, 0.0)      # stage 2: the defended (RoLSS) model
  config.tts = ml_collections.ConfigDict()
  config.tts.stage1_skip = (1.0, 1.0, 1.0, 1.0)  # stage 1: every skip kept
  config.tts.stage1_epochs = 5                   # M; stage 2 runs train.epochs - M (= N = 95)
  config.tts.lr_schedule = 'continue'            # 'continue' across stages, or 'restart' in stage 2
  config.tts.reinit = ('skip_scale',)            # target leaves that may start fresh (a learnable k)
  config.tts.drop = ('skip_scale',)              # source leaves that may be left behind
  if arg.demo or arg.tiny:
    config.tts.stage1_epochs = arg.stage1_epochs or max(1, round(0.05 * config.train.epochs))
  elif arg.stage1_epochs:
    config.tts.stage1_epochs = arg.stage1_epochs
  return config
