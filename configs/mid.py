"""MID: a variational information bottleneck before the head and beta * its KL term (Wang et al., AAAI 2021).

The head reads z ~ N(mu, std^2) of k = half the feature width (config.model.vib_dim; the attacks and the
evaluation use mu); beta = 0.003 as MID's VGG16 on CelebA (0.01 and 0.02 in other published comparisons; none
is published for the PPA protocol):

  python launch.py --config=configs/mid.py --workdir=/ckpt/r101_mid \\
      --config.model.name=resnet101 --config.data.manual_dir=/data/facescrub
  python launch.py --config=configs/mid.py:demo --workdir=workdir/mid_demo

Presets: those of configs/baseline.py, plus beta=... .
"""

from configs import baseline
from mi_jax import defenses


def get_config(arg=None):
  config, arg = baseline.with_options(arg, beta=defenses.MID_BETA)
  config.mid.beta = arg.beta
  return defenses.defend(config, 'mid')
