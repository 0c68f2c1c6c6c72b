"""SSF: scale the last stage's skip connections by k (fixed, or learnable in [0, 1]).

The paper's rows use k = 0.2 for additive skips (ResNet); pass k on the
command line for other models (the paper: 0.01 for DenseNet's concatenation):

  python launch.py --config=configs/ssf.py --workdir=/ckpt/r101_ssf \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub
  python launch.py --config=configs/ssf.py:learn --workdir=/ckpt/r101_ssf_learn   # k learnt, init 0.2

Demo: python launch.py --config=configs/ssf.py:demo --workdir=workdir/ssf_demo
Presets: demo, tiny, learn (combinable: `demo,learn`), k=0.4.
"""

from configs import baseline, common


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, tiny=False, epochs=8, learn=False, k=0.2)
  config = baseline.get_config(','.join(n for n in ('demo', 'tiny') if arg[n]) + f',epochs={arg.epochs}')
  config.model.skip = (1.0, 1.0, 1.0, f'learn:{arg.k}' if arg.learn else arg.k)
  return config
