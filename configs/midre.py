"""MIDRE: random erasing as an MI defense (Tran et al., TMLR 2025).

torchvision's RandomErasing on every training image, last in the pipeline: a square box of 10-40% of the
area filled with (0.485, 0.456, 0.406) in the normalised [-1, 1] space (MIDRE_TMLR's
ResNet18_FaceScrub_midre_0.4.yaml; `scale_high=0.8` for its 0.8 variant). mi_jax/data/augment.py.

  python launch.py --config=configs/midre.py --workdir=/ckpt/r18_midre \\
      --config.model.name=resnet18 --config.data.manual_dir=/data/facescrub
  python launch.py --config=configs/midre.py:demo --workdir=workdir/midre_demo

Presets: those of configs/baseline.py, plus scale_high=... .
"""

from configs import baseline
from mi_jax import defenses


def get_config(arg=None):
  config, arg = baseline.with_options(arg, scale_high=defenses.MIDRE_ERASING['erase_scale'][1])
  config = defenses.defend(config, 'midre')
  config.data.augment.erase_scale = (config.data.augment.erase_scale[0], arg.scale_high)
  return config
