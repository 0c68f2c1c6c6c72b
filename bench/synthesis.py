"""StyleGAN2 synthesis throughput: forward, and forward + backward to ws (what the attack runs).

  python bench/synthesis.py                                  # 32, 64, 128 px, batch 8, fp32 and bf16
  python bench/synthesis.py --resolutions=256,1024 --channel_base=32768 --batch=4
  STYLEGAN2_ADA_PYTORCH=/path/to/stylegan2-ada-pytorch python bench/synthesis.py   # + the official code

Random weights, const noise, one w per sample broadcast to every layer. Each
line times the variants side by side, interleaved in one run so machine load
hits them alike, and prints images/s and the ratios: backward cost
(fwd+bwd time / fwd time), bf16/fp32, and JAX/PyTorch when the official
StyleGAN2-ADA code is given (it is not part of this project; see
tests/test_stylegan_official.py).
"""

import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.stylegan import networks
import _official  # bench/, beside this script
import _timing  # bench/, beside this script

_RESOLUTIONS = flags.DEFINE_list('resolutions', ['32', '64', '128'], 'Output resolutions.')
_CHANNEL_BASE = flags.DEFINE_integer('channel_base', 8192, 'channels at res r = min(channel_base // r, channel_max).')
_CHANNEL_MAX = flags.DEFINE_integer('channel_max', 256, 'Maximum channels.')
_BATCH = flags.DEFINE_integer('batch', 8, 'Images per call.')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed calls per repeat.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Interleaved repeats; the best of each variant is reported.')


def jax_fns(config, batch, dtype):
  G = networks.Generator(config, dtype=dtype)
  variables = jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, config.z_dim)))
  ws = jnp.asarray(np.random.default_rng(0).standard_normal((batch, 1, config.w_dim)), jnp.float32)
  forward = jax.jit(lambda v, w: G.apply(v, w, method=G.synthesize))
  grad = jax.jit(jax.grad(lambda w, v: jnp.mean(jnp.square(G.apply(v, w, method=G.synthesize)))))

  def run_forward(n):
    for _ in range(n):
      out = forward(variables, ws)
    jax.block_until_ready(out)

  def run_grad(n):
    for _ in range(n):
      out = grad(ws, variables)
    jax.block_until_ready(out)

  return run_forward, run_grad


def torch_fns(config, batch):
  """The official generator at the same config (only if STYLEGAN2_ADA_PYTORCH names a checkout)."""
  official = os.environ.get('STYLEGAN2_ADA_PYTORCH')
  if not official:
    return None
  import torch  # pylint: disable=g-import-not-at-top

  G = _official.official_generator(official, config)
  ws = torch.randn(batch, 1, config.w_dim).repeat(1, config.num_ws, 1)

  def run_forward(n):
    with torch.no_grad():
      for _ in range(n):
        G.synthesis(ws, noise_mode='const', force_fp32=True)

  def run_grad(n):
    for _ in range(n):
      w = ws.clone().requires_grad_(True)
      G.synthesis(w, noise_mode='const', force_fp32=True).square().mean().backward()

  return run_forward, run_grad


def main(argv):
  del argv
  print(
      f'jax {jax.__version__} on {jax.devices()[0].platform}; batch {_BATCH.value}, '
      f'channel_base {_CHANNEL_BASE.value}, channel_max {_CHANNEL_MAX.value}'
  )
  header = f'{"res":>5} {"fwd img/s":>10} {"fwd+bwd img/s":>14} {"bwd cost":>9} {"bf16 fwd+bwd":>13} {"bf16/fp32":>10}'
  print(header + (f' {"torch fwd+bwd":>14} {"jax/torch":>10}' if os.environ.get('STYLEGAN2_ADA_PYTORCH') else ''))
  for res in map(int, _RESOLUTIONS.value):
    config = networks.GeneratorConfig(
        img_resolution=res, channel_base=_CHANNEL_BASE.value, channel_max=_CHANNEL_MAX.value
    )
    runs = {}
    runs['fwd'], runs['grad'] = jax_fns(config, _BATCH.value, jnp.float32)
    _, runs['bf16_grad'] = jax_fns(config, _BATCH.value, jnp.bfloat16)
    official = torch_fns(config, _BATCH.value)
    if official is not None:
      _, runs['torch_grad'] = official
    best = _timing.best_rates(runs, _STEPS.value, _REPEATS.value, units_per_call=_BATCH.value)
    line = (
        f'{res:>5} {best["fwd"]:>10.1f} {best["grad"]:>14.1f} {best["fwd"] / best["grad"]:>9.2f} '
        f'{best["bf16_grad"]:>13.1f} {best["bf16_grad"] / best["grad"]:>10.2f}'
    )
    if official is not None:
      line += f' {best["torch_grad"]:>14.1f} {best["grad"] / best["torch_grad"]:>10.2f}'
    print(line, flush=True)


if __name__ == '__main__':
  app.run(main)
