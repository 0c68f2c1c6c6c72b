"""Training-step throughput: mi_jax (JAX/Flax) against torchvision (PyTorch), same models and shapes.

  python bench/train_step.py                      # ResNet-18/34, DenseNet-121, 64x64, batch 32
  python bench/train_step.py --size=224 --batch=16 --models=resnet18

Both sides: random init, Adam, cross-entropy, BN in train mode, one full step
(forward, backward, update), timed after warm-up/compilation, interleaved in one
run so machine load hits both alike. Prints steps/s and the JAX/PyTorch ratio.
"""

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import optax

from mi_jax import models
from mi_jax.convert import torch_compat
from mi_jax.train import sharding, state as state_lib, steps
import _timing  # bench/, beside this script

_MODELS = flags.DEFINE_list('models', ['resnet18', 'resnet34', 'densenet121'], 'Models to time.')
_SIZE = flags.DEFINE_integer('size', 64, 'Input height and width.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per repeat.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Interleaved repeats; the best of each side is reported.')


def jax_step_fn(name, batch, size, num_classes=10):
  config = ml_collections.ConfigDict(
      dict(
          name=name,
          num_classes=num_classes,
          skip=(1, 1, 1, 1),
          width=0,
          stem='imagenet',
          dtype='float32',
          skip_mode='truncate',
      )
  )
  lr_fn = optax.constant_schedule(1e-3)
  state = state_lib.create_train_state(models.build_model(config), optax.adam(lr_fn), (1, size, size, 3), 0)
  mesh = sharding.make_mesh(1)
  train_step, _ = steps.compile_steps(mesh, lr_fn)
  rng = np.random.default_rng(0)
  data = sharding.shard_batch(
      {
          'image': rng.normal(size=(batch, size, size, 3)).astype(np.float32),
          'label': rng.integers(0, num_classes, batch).astype(np.int32),
      },
      mesh,
  )
  holder = {'state': jax.device_put(state, sharding.replicated(mesh))}

  def run(n):
    for _ in range(n):
      holder['state'], metrics = train_step(holder['state'], data)
    jax.block_until_ready(metrics)

  return run


def torch_step_fn(name, batch, size, num_classes=10):
  import torch  # pylint: disable=g-import-not-at-top

  net = getattr(torch_compat.import_torchvision().models, name)(num_classes=num_classes).train()
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  x = torch.randn(batch, 3, size, size)
  y = torch.randint(0, num_classes, (batch,))

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      torch.nn.functional.cross_entropy(net(x), y).backward()
      opt.step()

  return run


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top

  print(
      f'jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} '
      f'({torch.get_num_threads()} threads); input {_SIZE.value}x{_SIZE.value}, batch {_BATCH.value}'
  )
  print(f'{"model":<12} {"jax steps/s":>12} {"torch steps/s":>14} {"jax/torch":>10}')
  for name in _MODELS.value:
    runs = {
        'jax': jax_step_fn(name, _BATCH.value, _SIZE.value),
        'torch': torch_step_fn(name, _BATCH.value, _SIZE.value),
    }
    best = _timing.best_rates(runs, _STEPS.value, _REPEATS.value, units_per_call=1)
    print(f'{name:<12} {best["jax"]:>12.2f} {best["torch"]:>14.2f} {best["jax"] / best["torch"]:>10.2f}')


if __name__ == '__main__':
  app.run(main)
