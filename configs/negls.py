"""Label smoothing as a defense (Struppek et al., ICLR 2024): NegLS (alpha < 0) resists inversion, LS (alpha > 0)
helps it. Targets (1 - alpha) onehot + alpha / C; negative alpha follows PPA's scheduler (0 for the first half of
the epochs, then up to alpha by 75%; `label_smoothing.schedule='constant'`: the full alpha throughout, as the
repository ran until it wired the scheduler in). mi_jax/defenses/label_smoothing.py.

  python launch.py --config=configs/negls.py --workdir=/ckpt/r152_negls \\
      --config.model.name=resnet152 --config.data.manual_dir=/data/facescrub
  python launch.py --config=configs/negls.py:demo --workdir=workdir/negls_demo
  python launch.py --config=configs/ls.py:demo --workdir=workdir/ls_demo   # positive LS, alpha 0.1

Presets: those of configs/baseline.py, plus alpha=... (default -0.05; positive: the LS row, configs/ls.py).
"""

from configs import baseline
from mi_jax import defenses


def get_config(arg=None, alpha: float = defenses.NEGLS_ALPHA):
  config, arg = baseline.with_options(arg, alpha=alpha)
  config = defenses.defend(config, 'negls' if arg.alpha < 0 else 'ls')
  config.label_smoothing.alpha = arg.alpha
  return config
