"""SSF: scale the last stage's skip connections by k (fixed, or learnable in [0, 1]).

The paper's rows use k = 0.2 for additive skips (ResNet) and k = 0.01 for
DenseNet's concatenation. Name the model in the preset so k follows it:

  python launch.py --config=configs/ssf.py:model=resnet101 --workdir=/ckpt/r101_ssf \\
      --config.data.manual_dir=/data/facescrub
  python launch.py --config=configs/ssf.py:model=densenet121 --workdir=/ckpt/d121_ssf   # k = 0.01
  python launch.py --config=configs/ssf.py:learn --workdir=/ckpt/r18_ssf_learn        # k learnt, init 0.2

(`--config.model.name=...` on its own keeps the preset's k: set k explicitly then, `:k=0.01`.)

Demo: python launch.py --config=configs/ssf.py:demo --workdir=workdir/ssf_demo
Presets: demo, tiny, learn, model=NAME, k=K (combinable: `demo,learn,k=0.4`).
"""

from configs import baseline, common
from mi_jax import defenses


def get_config(arg=None):
  arg = common.parse_arg(arg, demo=False, tiny=False, epochs=8, learn=False, k=-1.0, model='')
  config = baseline.get_config(','.join(n for n in ('demo', 'tiny') if arg[n]) + f',epochs={arg.epochs}')
  if arg.model:
    config.model.name = arg.model
  return defenses.defend(config, 'ssf', k=arg.k if arg.k >= 0 else None, learn=arg.learn)
