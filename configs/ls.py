"""LS: positive label smoothing, alpha = 0.1, which makes inversion easier (Struppek et al., ICLR 2024); the
NegLS config (configs/negls.py) with its positive alpha.

  python launch.py --config=configs/ls.py:demo --workdir=workdir/ls_demo

Presets: those of configs/negls.py.
"""

from configs import negls
from mi_jax import defenses


def get_config(arg=None):
  return negls.get_config(arg, alpha=defenses.LS_ALPHA)
