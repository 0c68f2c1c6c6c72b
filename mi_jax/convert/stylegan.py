"""The `import_stylegan` job: an NVIDIA StyleGAN2-ADA pickle -> a generator directory (the workdir).

  python launch.py --config=configs/import_stylegan.py --config.pickle=~/ffhq.pkl --workdir=~/generators/ffhq

Nothing in the pickle is executed (third_party/stylegan_jax/nvidia_pickle.py); torch is needed for this step only.
"""

import os
import pickle

from absl import logging
import ml_collections

from mi_jax.convert import torch_compat
from mi_jax.stylegan import nvidia_pickle


def validate_config(config: ml_collections.ConfigDict):
  path = os.path.expanduser(config.pickle)
  if not config.pickle or not os.path.isfile(path):
    raise ValueError(f'config.pickle={config.pickle!r}: not a file (name the NVIDIA network pickle to import)')
  if config.network not in ('G_ema', 'G'):
    raise ValueError(f'config.network={config.network!r}: expected G_ema or G')


def import_stylegan(config: ml_collections.ConfigDict, workdir: str) -> dict:
  path = os.path.expanduser(config.pickle)
  try:
    gen_config = nvidia_pickle.import_pickle(path, workdir, config.network)
  except nvidia_pickle.UnsafePickleError as e:
    raise torch_compat.weight_file_error(path, e, 'StyleGAN2-ADA network pickle', refused=True) from None
  except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, IndexError, ValueError) as e:
    raise torch_compat.weight_file_error(path, e, 'StyleGAN2-ADA network pickle') from None
  logging.info('Wrote %s from %s[%s]: %s', workdir, config.pickle, config.network, gen_config)
  return gen_config.to_dict()


run = import_stylegan  # the `import_stylegan` job (mi_jax/jobs.py)
