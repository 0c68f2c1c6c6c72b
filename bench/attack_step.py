"""PPA optimisation throughput (latent-steps/s): one jitted scan of Adam steps over a batch of latents.

  python bench/attack_step.py                          # demo size and a larger generator, 1/2/4/8 devices
  python bench/attack_step.py --sizes=demo --devices=1

Random weights: a StyleGAN2 generator (demo: 32 px, 1 channel; large: 256 px, 3 channels, centre crop
224 -> the target's 64 px input) and a ResNet-18 target (demo: width 16, small stem, 32 px). Each row
runs the same global batch over 1, 2, 4, 8 devices side by side in one process (on CPU these are
fake devices over the same cores, so the ratio shows sharding overhead, not speed-up; on a
multi-GPU host it is the scaling). The devices are forced with XLA_FLAGS before jax is imported.
"""

import os
from typing import Callable, NamedTuple

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from mi_jax import models  # pylint: disable=g-import-not-at-top
from mi_jax.attacks import optimize, ppa  # pylint: disable=g-import-not-at-top
from mi_jax.train import sharding  # pylint: disable=g-import-not-at-top
from mi_jax.stylegan import networks  # pylint: disable=g-import-not-at-top
import _timing  # pylint: disable=g-import-not-at-top  # bench/, beside this script

_SIZES = flags.DEFINE_list('sizes', ['demo', 'large'], 'demo and/or large.')
_DEVICES = flags.DEFINE_list('devices', ['1', '2', '4', '8'], 'Device counts to compare.')
_BATCH = flags.DEFINE_integer('batch', 16, 'Global batch of latents.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Optimisation steps per call.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Interleaved repeats; the best of each is reported.')

SETUPS = {
    'demo': dict(
        gen=dict(
            img_resolution=32, img_channels=1, z_dim=64, w_dim=64, mapping_layers=2, channel_base=1024, channel_max=128
        ),
        crop=0,
        size=32,
        width=16,
    ),
    'large': dict(
        gen=dict(img_resolution=256, img_channels=3, channel_base=8192, channel_max=256), crop=224, size=64, width=32
    ),
}


class World(NamedTuple):
  """A random generator and target: what every attack step of a setup is built from."""

  G: networks.Generator
  gen_vars: dict
  classify: Callable  # (x, perturbations) -> logits
  zeros: Callable  # batch -> the target's perturbation zeros
  settings: optimize.OptimizeSettings


def build_world(setup, steps, dtype=jnp.float32) -> World:
  """Random weights for a setup; `dtype` is the generator's compute dtype.

  The target is a ResNet-18 unless the setup names another model ('model', 'stem', 'num_classes').
  """
  gen_config = networks.GeneratorConfig(**setup['gen'])
  G = networks.Generator(gen_config, dtype=dtype)
  with jax.threefry_partitionable(False):  # compiles several times faster on XLA:CPU (models.init_variables)
    gen_vars = jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, gen_config.z_dim)))
  channels = gen_config.img_channels
  model = models.build_model(
      ml_collections.ConfigDict(
          dict(
              name=setup.get('model', 'resnet18'),
              num_classes=setup.get('num_classes', 10),
              skip=(1,) * models.num_skip_stages(setup.get('model', 'resnet18')),
              width=setup['width'],
              stem=setup.get('stem', 'small'),
              dtype='float32',
              skip_mode='truncate',
          )
      )
  )
  variables = models.init_variables(model, (1, setup['size'], setup['size'], channels), jax.random.key(1))
  variables = {'params': variables['params'], 'batch_stats': variables['batch_stats']}
  settings = optimize.OptimizeSettings(steps=steps, center_crop=setup['crop'], input_size=setup['size'])
  classify = lambda x, p: model.apply({**variables, 'perturbations': p}, x, train=False)
  zeros = ppa.perturbation_zeros(model, variables, setup['size'], channels)
  return World(G, gen_vars, classify, zeros, settings)


def build(setup, num_devices, batch, steps, world: World | None = None):
  """(jitted PPA optimisation, its arguments) for a setup: random generator and target.

  `world` (build_world's) reuses one generator and target for several batch sizes; its settings then
  replace `steps`.
  """
  G, gen_vars, classify, zeros, settings = world if world is not None else build_world(setup, steps)
  gen_config = G.config
  synthesize = lambda w: G.apply(gen_vars, w[:, None], method=G.synthesize)
  mesh = sharding.make_mesh(num_devices)
  batch_sharded, replicated = sharding.data_sharded(mesh), sharding.replicated(mesh)
  fn = jax.jit(
      optimize.make_optimize_fn(synthesize, classify, zeros, settings),
      in_shardings=(batch_sharded, batch_sharded, batch_sharded, replicated),
      out_shardings=(batch_sharded, replicated),
  )
  w0 = jax.device_put(
      np.random.default_rng(0).standard_normal((batch, gen_config.w_dim)).astype(np.float32), batch_sharded
  )
  targets = jax.device_put(np.arange(batch, dtype=np.int32) % 10, batch_sharded)
  valid = jax.device_put(np.ones(batch, bool), batch_sharded)
  return fn, (w0, targets, valid, jax.random.key(0))


def make_run(setup, num_devices, batch, steps):
  fn, args = build(setup, num_devices, batch, steps)

  def run(n):
    for _ in range(n):
      out = fn(*args)
    jax.block_until_ready(out)

  return run


def main(argv):
  del argv
  counts = [int(d) for d in _DEVICES.value]
  print(
      f'jax {jax.__version__} on {jax.devices()[0].platform} ({len(jax.devices())} devices); '
      f'global batch {_BATCH.value}, {_STEPS.value} steps per call'
  )
  print(
      f'{"setup":<7}'
      + ''.join(f'{f"{d} dev lat-steps/s":>20}' for d in counts)
      + ''.join(f'{f"{d}/{counts[0]} dev":>12}' for d in counts[1:])
  )
  for name in _SIZES.value:
    runs = {d: make_run(SETUPS[name], d, _BATCH.value, _STEPS.value) for d in counts}
    best = _timing.best_rates(runs, 1, _REPEATS.value, units_per_call=_BATCH.value * _STEPS.value)
    print(
        f'{name:<7}'
        + ''.join(f'{best[d]:>20.1f}' for d in counts)
        + ''.join(f'{best[d] / best[counts[0]]:>12.2f}' for d in counts[1:]),
        flush=True,
    )


if __name__ == '__main__':
  app.run(main)
