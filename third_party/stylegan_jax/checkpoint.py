"""A generator on disk: `generator.json` (architecture + provenance) and Orbax `variables/`.

Both the pickle importer and the GAN trainer write this format, and the attack
reads it, so a generator is one directory whatever made it.
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from . import networks

CONFIG_FILE = 'generator.json'
VARIABLES_DIR = 'variables'
FORMAT_VERSION = 1


def save_generator(directory: str, config: networks.GeneratorConfig, variables: dict, source: dict | None = None):
  """Writes {'params', 'buffers'} and the config; refuses to overwrite an existing generator."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.exists(os.path.join(directory, CONFIG_FILE)):
    raise FileExistsError(f'{directory} already holds a generator; choose another directory')
  os.makedirs(directory, exist_ok=True)
  variables = jax.tree.map(np.asarray, {'params': variables['params'], 'buffers': variables.get('buffers', {})})
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, VARIABLES_DIR), variables)
  meta = {'format': FORMAT_VERSION, 'config': config.to_dict(), 'source': source or {}}
  tmp = os.path.join(directory, CONFIG_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(directory, CONFIG_FILE))  # written last: its presence marks a complete generator


def load_generator(directory: str) -> tuple[networks.GeneratorConfig, dict, dict]:
  """(config, {'params', 'buffers'} as numpy, source metadata) of a generator directory."""
  directory = os.path.abspath(os.path.expanduser(directory))
  config_path = os.path.join(directory, CONFIG_FILE)
  if not os.path.exists(config_path):
    raise FileNotFoundError(
        f'{directory} is not a generator directory (no {CONFIG_FILE}); make one with '
        'mi_jax.stylegan.nvidia_pickle or the gan job'
    )
  with open(config_path) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT_VERSION:
    raise ValueError(f'{config_path}: format {meta.get("format")}, expected {FORMAT_VERSION}')
  config = networks.GeneratorConfig.from_dict(meta['config'])
  with ocp.StandardCheckpointer() as ckptr:
    variables = ckptr.restore(os.path.join(directory, VARIABLES_DIR))
  variables = jax.tree.map(np.asarray, variables)
  return config, variables, meta.get('source', {})
