"""A low-resolution GAN on disk: `gan64.json` (kind, architecture, provenance) and Orbax `generator/`, `critic/`.

The gan64 job and the importer of published weights write this format; the GMI/KEDMI attacks read it
(they need the critic too: it is their prior).
"""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp

from mi_jax import errors
from mi_jax.gan64 import networks, training

# GMI's and KEDMI's unconditional GANs (training.KINDS) and PLG-MI's conditional one (plgmi.KIND).
KINDS = training.KINDS + ('plgmi',)
from mi_jax.train import checkpoint as checkpoint_lib

META_FILE = 'gan64.json'
FORMAT_VERSION = 1


class GanDirectoryError(errors.MiJaxError, ValueError):
  """A directory that does not hold a usable low-resolution GAN."""


def save_gan(directory: str, config: networks.GanConfig, kind: str, g_vars: dict, d_vars: dict, source: dict):
  """Writes the generator's {'params', 'batch_stats'}, the critic's {'params'} (PLG-MI's also its spectral
  norms' 'batch_stats') and gan64.json (last: its presence marks a complete directory); refuses to
  overwrite one."""
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.exists(os.path.join(directory, META_FILE)):
    raise FileExistsError(f'{directory} already holds a GAN; choose another directory')
  os.makedirs(directory, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    for name, variables in (('generator', g_vars), ('critic', d_vars)):
      path = os.path.join(directory, name)
      if os.path.exists(path):  # a half-written directory of a killed export
        continue
      ckptr.save(path, jax.tree.map(np.asarray, variables))
  meta = {'format': FORMAT_VERSION, 'kind': kind, 'config': config.to_dict(), 'source': source}
  tmp = os.path.join(directory, META_FILE + '.tmp')
  with open(tmp, 'w') as f:
    json.dump(meta, f, indent=2)
  os.replace(tmp, os.path.join(directory, META_FILE))


def load_gan(directory: str, field: str = 'generator.dir') -> tuple[networks.GanConfig, str, dict, dict]:
  """(config, kind, generator variables, critic variables) of a GAN directory; errors name `field`."""
  directory = os.path.abspath(os.path.expanduser(directory))
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    raise GanDirectoryError(
        f'config.{field}={directory!r} holds no {META_FILE}: train one with the gan64 job '
        '(configs/gan64.py) or import published weights (mi_jax/convert/gan64.py)'
    )
  with open(path) as f:
    meta = json.load(f)
  if meta.get('format') != FORMAT_VERSION or meta.get('kind') not in KINDS:
    raise GanDirectoryError(
        f'{path}: format {meta.get("format")}, kind {meta.get("kind")!r} is not one this code reads'
    )
  g_vars = checkpoint_lib.restore_on_host(os.path.join(directory, 'generator'))
  d_vars = checkpoint_lib.restore_on_host(os.path.join(directory, 'critic'))
  return networks.GanConfig.from_dict(meta['config']), meta['kind'], g_vars, d_vars
