"""What config.matmul_precision costs: speed and numerical drift of each jax_default_matmul_precision.

  python bench/matmul_precision.py                                   # CPU-sized: demo attack, 64px ResNet-18
  python bench/matmul_precision.py --attack=large --train_size=224 --train_batch=64    # on a GPU

Every job sets jax_default_matmul_precision from config.matmul_precision. The paper's preset is
'highest' (true float32, as on its V100s); 'default' lets A100/H100 run float32 convolutions and
matmuls in TF32, 'bfloat16' in bf16. For each setting this prints, side by side in one run, the PPA
optimisation rate (latent-steps/s, bench/attack_step.py's setups) and a ResNet-18 training step rate,
each relative to 'highest', and how far the results drift from 'highest' (max |difference| / max |value|
of the optimised latents after the steps, and of the training loss after one step). On CPU XLA
computes float32 in float32 whatever the setting: expect ratios near 1 and no drift there.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # _timing, attack_step beside this script

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import optax  # pylint: disable=g-import-not-at-top

from mi_jax import models  # pylint: disable=g-import-not-at-top
from mi_jax.train import state as state_lib, steps  # pylint: disable=g-import-not-at-top
import _timing  # pylint: disable=g-import-not-at-top
import attack_step  # pylint: disable=g-import-not-at-top

_PRECISIONS = flags.DEFINE_list('precisions', ['highest', 'high', 'default', 'bfloat16'], 'Settings to compare.')
_ATTACK = flags.DEFINE_enum('attack', 'demo', list(attack_step.SETUPS), 'Attack setup (bench/attack_step.py).')
_ATTACK_BATCH = flags.DEFINE_integer('attack_batch', 8, 'Latents per attack call.')
# --repeats (interleaved repeats, the best of each reported) is bench/attack_step.py's flag.
_ATTACK_STEPS = flags.DEFINE_integer('attack_steps', 5, 'Optimisation steps per attack call.')
_TRAIN_SIZE = flags.DEFINE_integer('train_size', 64, 'Training input size (ResNet-18, ImageNet stem).')
_TRAIN_BATCH = flags.DEFINE_integer('train_batch', 16, 'Training batch.')
_TRAIN_STEPS = flags.DEFINE_integer('train_steps', 3, 'Timed training steps per call.')


def attack_fn(setup, batch, num_steps):
  """() -> the latents after `num_steps` of PPA's optimisation (bench/attack_step.py's setup, one device)."""
  fn, args = attack_step.build(setup, 1, batch, num_steps)
  return lambda: fn(*args)[0]


def train_fn(size, batch):
  """() -> the loss of one ResNet-18 training step from a fixed state (Adam, BN in train mode)."""
  model = models.build_model(
      ml_collections.ConfigDict(
          dict(name='resnet18', num_classes=10, skip=(1, 1, 1, 1), width=0, stem='imagenet', dtype='float32')
      )
  )
  lr = optax.constant_schedule(1e-3)
  state = state_lib.create_train_state(model, optax.adam(lr), (1, size, size, 3), 0)
  rng = np.random.default_rng(0)
  data = {
      'image': jnp.asarray(rng.normal(size=(batch, size, size, 3)), jnp.float32),
      'label': jnp.asarray(rng.integers(0, 10, batch), jnp.int32),
  }
  step = jax.jit(lambda s, b: steps.train_step(s, b, lr)[1]['loss'])
  return lambda: step(state, data)


def under(precision, fn):
  """fn traced and run with jax_default_matmul_precision = precision (jit caches per setting)."""

  def run():
    with jax.default_matmul_precision(precision):
      return fn()

  return run


def main(argv):
  del argv
  device = jax.devices()[0]
  print(
      f'jax {jax.__version__} on {device.platform} ({device.device_kind}); attack {_ATTACK.value}: batch '
      f'{_ATTACK_BATCH.value} x {_ATTACK_STEPS.value} steps; ResNet-18 training step at {_TRAIN_SIZE.value}px, '
      f'batch {_TRAIN_BATCH.value}'
  )
  attack = attack_fn(attack_step.SETUPS[_ATTACK.value], _ATTACK_BATCH.value, _ATTACK_STEPS.value)
  train = train_fn(_TRAIN_SIZE.value, _TRAIN_BATCH.value)
  rows = {}
  for name, fn, units in (('attack', attack, _ATTACK_BATCH.value * _ATTACK_STEPS.value), ('train', train, 1)):
    variants = {p: under(p, fn) for p in _PRECISIONS.value}
    results = {p: np.asarray(v(), np.float64) for p, v in variants.items()}  # also compiles each
    reference = results.get('highest', next(iter(results.values())))
    drift = {p: float(np.abs(r - reference).max() / max(np.abs(reference).max(), 1e-30)) for p, r in results.items()}
    calls = {p: (lambda v: lambda n: [jax.block_until_ready(v()) for _ in range(n)])(v) for p, v in variants.items()}
    rates = _timing.best_rates(calls, _TRAIN_STEPS.value if name == 'train' else 1, attack_step._REPEATS.value, units)
    rows[name] = (rates, drift)
  base = _PRECISIONS.value[0]
  print(
      f'{"setting":<10} {"attack lat-steps/s":>19} {f"x {base}":>10} {"latent drift":>13} '
      f'{"train steps/s":>14} {f"x {base}":>10} {"loss drift":>11}'
  )
  for p in _PRECISIONS.value:
    (a_rate, a_drift), (t_rate, t_drift) = [(rows[n][0][p], rows[n][1][p]) for n in ('attack', 'train')]
    print(
        f'{p:<10} {a_rate:>19.2f} {a_rate / rows["attack"][0][base]:>10.2f} {a_drift:>13.1e} '
        f'{t_rate:>14.2f} {t_rate / rows["train"][0][base]:>10.2f} {t_drift:>11.1e}',
        flush=True,
    )


if __name__ == '__main__':
  app.run(main)
