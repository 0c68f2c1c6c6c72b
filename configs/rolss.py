"""RoLSS: train the target with the last stage's skip connections removed.

  python launch.py --config=configs/rolss.py --workdir=/ckpt/r101_rolss \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub

Demo (MNIST-5k private digits on CPU, a few minutes):

  python launch.py --config=configs/rolss.py:demo --workdir=workdir/rolss_demo

Every other field is the baseline's (configs/baseline.py), so the two differ
only in `model.skip`. Other stages: --config.model.skip="(1, 1, 0, 1)".
"""

from configs import baseline
from mi_jax import defenses


def get_config(arg=None):
  return defenses.defend(baseline.get_config(arg), 'rolss')
