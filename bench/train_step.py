"""Training-step throughput: mi_jax (JAX/Flax) against torchvision (PyTorch), same models and shapes.

  python bench/train_step.py                      # ResNet-18/34, DenseNet-121, 64x64, batch 32
  python bench/train_step.py --size=224 --batch=16 --models=resnet18

Both sides: random init, Adam, cross-entropy, BN in train mode, one full step
(forward, backward, update), timed after warm-up/compilation, interleaved in one
run so machine load hits both alike. Prints steps/s and the JAX/PyTorch ratio. On CPU a third column
times JAX with `mi_jax.models.ops`'s CPU fast path off (XLA's own convolutions and max pooling), the
speed before that path existed.
"""

from absl import app
from absl import flags
import jax
import ml_collections
import numpy as np
import optax

from mi_jax import models
from mi_jax.models import ops
from mi_jax.convert import torch_compat
from mi_jax.train import sharding, state as state_lib, steps
import _timing  # bench/, beside this script

_MODELS = flags.DEFINE_list('models', ['resnet18', 'resnet34', 'densenet121'], 'Models to time.')
_SIZE = flags.DEFINE_integer('size', 64, 'Input height and width.')
_BATCH = flags.DEFINE_integer('batch', 32, 'Batch size.')
_STEPS = flags.DEFINE_integer('steps', 10, 'Timed steps per repeat.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Interleaved repeats; the best of each side is reported.')
_XLA_CONV = flags.DEFINE_bool('xla_conv', True, 'Also time JAX with the CPU fast path off (CPU only).')


def jax_step_fn(name, batch, size, num_classes=10, fast_cpu_path=True, dtype='float32'):
  """run(n): n of the project's training steps; `dtype` is the model's compute dtype (config.model.dtype)."""
  config = ml_collections.ConfigDict(
      dict(
          name=name,
          num_classes=num_classes,
          skip=(1, 1, 1, 1),
          width=0,
          stem='imagenet',
          dtype=dtype,
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
  with ops.fast_cpu_path(fast_cpu_path):  # the path is chosen when the step is traced, i.e. on its first call
    holder['state'], _ = train_step(holder['state'], data)

  def run(n):
    for _ in range(n):
      holder['state'], metrics = train_step(holder['state'], data)
    jax.block_until_ready(metrics)

  return run


def torch_step_fn(name, batch, size, num_classes=10, device='cpu', channels_last=False, amp=False):
  """run(n): n torchvision training steps on `device`, optionally channels-last and under bf16 autocast (AMP)."""
  import torch  # pylint: disable=g-import-not-at-top

  memory_format = torch.channels_last if channels_last else torch.contiguous_format
  net = getattr(torch_compat.import_torchvision().models, name)(num_classes=num_classes)
  net = net.to(device, memory_format=memory_format).train()
  opt = torch.optim.Adam(net.parameters(), lr=1e-3)
  x = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=memory_format)
  y = torch.randint(0, num_classes, (batch,), device=device)
  on_gpu = torch.device(device).type == 'cuda'

  def run(n):
    for _ in range(n):
      opt.zero_grad(set_to_none=True)
      with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=amp):
        loss = torch.nn.functional.cross_entropy(net(x), y)
      loss.backward()
      opt.step()
    if on_gpu:  # kernels run asynchronously: wait for the last step, as jax.block_until_ready does
      torch.cuda.synchronize()

  return run


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top

  print(
      f'jax {jax.__version__} on {jax.devices()[0].platform}, torch {torch.__version__} '
      f'({torch.get_num_threads()} threads); input {_SIZE.value}x{_SIZE.value}, batch {_BATCH.value}'
  )
  xla_conv = _XLA_CONV.value and jax.default_backend() == 'cpu'
  print(
      f'{"model":<12} {"jax steps/s":>12} {"torch steps/s":>14} {"jax/torch":>10}'
      + (f' {"jax, XLA convs":>15} {"its /torch":>11}' if xla_conv else '')
  )
  for name in _MODELS.value:
    runs = {
        'jax': jax_step_fn(name, _BATCH.value, _SIZE.value),
        'torch': torch_step_fn(name, _BATCH.value, _SIZE.value),
    }
    if xla_conv:
      runs['xla'] = jax_step_fn(name, _BATCH.value, _SIZE.value, fast_cpu_path=False)
    best = _timing.best_rates(runs, _STEPS.value, _REPEATS.value, units_per_call=1)
    print(
        f'{name:<12} {best["jax"]:>12.2f} {best["torch"]:>14.2f} {best["jax"] / best["torch"]:>10.2f}'
        + (f' {best["xla"]:>15.2f} {best["xla"] / best["torch"]:>11.2f}' if xla_conv else '')
    )


if __name__ == '__main__':
  app.run(main)
