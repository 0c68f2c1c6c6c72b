"""RoLSS + BiDO: last-stage skips removed and the BiDO-HSIC regulariser (paper: ResNet-101
AttAcc 41.44% against 67.07% for BiDO alone, about 1% more accuracy lost).

  python launch.py --config=configs/rolss_bido.py --workdir=/ckpt/r101_rolss_bido \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub
  python launch.py --config=configs/rolss_bido.py:demo --workdir=workdir/rolss_bido_demo
"""

from configs import bido
from mi_jax import defenses


def get_config(arg=None):
  return defenses.defend(bido.get_config(arg), 'rolss_bido')
