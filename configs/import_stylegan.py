"""Import an NVIDIA StyleGAN2-ADA network pickle as a generator directory (the workdir).

  python launch.py --config=configs/import_stylegan.py --config.pickle=~/ffhq.pkl --workdir=~/generators/ffhq

The workdir then holds `generator.json` and Orbax `variables/`; point the attack at it.
No code from the pickle runs. Needs the torch extra (`pip install -e '.[torch]'`).
"""

import ml_collections

from configs import common


def get_config(arg=None):
  del arg
  config = ml_collections.ConfigDict()
  config.job = 'import_stylegan'
  config.matmul_precision = common.MATMUL_PRECISION
  config.pickle = ''  # The .pkl written by StyleGAN2-ADA (PyTorch), e.g. PPA's ffhq.pkl.
  config.network = 'G_ema'  # Which network in the pickle: G_ema (what PPA uses) or G.
  return config
