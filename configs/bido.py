"""BiDO-HSIC: every skip kept, hidden features regularised by HSIC (mi_jax/defenses/bido.py).

loss = CE + sum_j (a1 nHSIC(X, Z_j) - a2 nHSIC(Z_j, Y)) with BiDO's CelebA weights
(a1, a2) = (0.05, 0.5) and sigma = 5; the RoLSS paper does not say which it used.

  python launch.py --config=configs/bido.py --workdir=/ckpt/r34_bido \\
      --config.model.name=resnet34 --config.data.manual_dir=/data/facescrub
  python launch.py --config=configs/bido.py:demo --workdir=workdir/bido_demo

Presets: those of configs/baseline.py, plus a1=..., a2=... .
"""

from configs import baseline
from mi_jax import defenses


def get_config(arg=None):
  config, arg = baseline.with_options(arg, a1=defenses.BIDO_WEIGHTS[0], a2=defenses.BIDO_WEIGHTS[1])
  config.bido.a1, config.bido.a2 = arg.a1, arg.a2
  return defenses.defend(config, 'bido')
