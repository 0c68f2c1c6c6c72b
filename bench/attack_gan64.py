"""GMI and KEDMI attack throughput (latent-steps/s), JAX against torch, same networks and shapes, one run.

  python bench/attack_gan64.py                    # the protocol's shapes: 64 px, width 64, a batch of 60
  python bench/attack_gan64.py --width=16 --batch=20 --steps=5

Random weights on both sides: the GMI/KEDMI generator, GMI's WGAN critic or KEDMI's minibatch discriminator
(the torch definitions in tests/torch_gan64.py), and the protocol's VGG16-BN target with 1000 classes at
64 px (tests/torch_evolve.py, and ours: mi_jax/models/evolve.py). JAX runs `steps` optimisation steps in one jitted scan (mi_jax/attacks/gmi.py);
torch runs the reference loop: GMI's hand-written Nesterov update with the clip, KEDMI's Adam on (mu,
logvar) with a reparameterised sample, each step a forward and backward through generator, critic and
target. Prints steps/s for each and the JAX/torch ratio.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..', 'tests'))  # torch_gan64

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top

from mi_jax import models  # pylint: disable=g-import-not-at-top
from mi_jax.attacks import gmi  # pylint: disable=g-import-not-at-top
from mi_jax.gan64 import networks  # pylint: disable=g-import-not-at-top
import _timing  # pylint: disable=g-import-not-at-top  # bench/, beside this script

_WIDTH = flags.DEFINE_integer('width', 64, 'GAN width (64: the protocol).')
_BATCH = flags.DEFINE_integer('batch', 60, 'Identities per batch (60: KEDMI and LOMMA).')
_STEPS = flags.DEFINE_integer('steps', 10, 'Optimisation steps per call.')
_REPEATS = flags.DEFINE_integer('repeats', 2, 'Interleaved repeats; the best of each is reported.')
CLASSES = 1000


def jax_runner(method: str, config: networks.GanConfig, batch: int, steps: int):
  kind = 'wgan_gp' if method == 'gmi' else 'kedmi'
  G = networks.Generator(config)
  D = networks.WGANCritic(config) if kind == 'wgan_gp' else networks.MinibatchCritic(config)
  images = jnp.zeros((2, 64, 64, 3))
  g_vars = G.init(jax.random.key(0), jnp.zeros((2, config.z_dim)))
  d_vars = D.init(jax.random.key(1), images)
  target = models.build_model(
      ml_collections.ConfigDict(
          dict(
              name='vgg16_64',
              num_classes=CLASSES,
              skip=(),
              width=0,
              stem='imagenet',
              dtype='float32',
              skip_mode='truncate',
              unit_range_input=True,
          )
      )
  )
  t_vars = models.init_variables(target, (1, 64, 64, 3), jax.random.key(2))
  t_vars = {'params': t_vars['params'], 'batch_stats': t_vars['batch_stats']}
  classify = lambda x, perturbations: gmi.logits_and_features(
      target, t_vars, x * 2.0 - 1.0, perturbations
  )  # -> [0, 1] inside
  settings = gmi.InversionSettings(method=method, steps=steps, clip=method == 'gmi')
  invert = jax.jit(
      gmi.make_inversion_fn(
          lambda z: G.apply(g_vars, z), lambda x: D.apply(d_vars, x), kind, [classify], None, settings
      )
  )
  targets, valid = jnp.arange(batch) % CLASSES, jnp.ones(batch, bool)
  z = jax.random.normal(jax.random.key(3), (batch, config.z_dim))
  init = z if method == 'gmi' else {'mu': jnp.zeros_like(z), 'logvar': jnp.ones_like(z)}

  def run(calls):
    for _ in range(calls):
      jax.block_until_ready(invert(init, targets, valid, jax.random.key(4)))

  return run


def torch_runner(method: str, width: int, batch: int, steps: int):
  import torch  # pylint: disable=g-import-not-at-top
  import torch_evolve  # pylint: disable=g-import-not-at-top
  import torch_gan64  # pylint: disable=g-import-not-at-top

  G = torch_gan64.TorchGenerator(dim=width).eval()
  D = (
      torch_gan64.TorchWGANCritic(dim=width) if method == 'gmi' else torch_gan64.TorchMinibatchCritic(dim=width)
  ).eval()
  T = torch_evolve.VGG16(CLASSES).eval()
  for net in (G, D, T):
    net.requires_grad_(False)
  targets = torch.arange(batch) % CLASSES
  ce = torch.nn.CrossEntropyLoss()

  def loss(z):
    images = G(z)
    critic = D(images)
    prior = -critic.mean() if method == 'gmi' else torch.nn.functional.softplus(-torch.logsumexp(critic[1], 1)).mean()
    return prior + 100.0 * ce(T(images)[1], targets)

  def run(calls):
    for _ in range(calls):
      if method == 'gmi':  # GMI's update: v <- m v - lr g; z <- z - m v_old + (1 + m) v; clip
        z, v = torch.randn(batch, 100), torch.zeros(batch, 100)
        for _ in range(steps):
          z.requires_grad_(True)
          (grad,) = torch.autograd.grad(loss(z), z)
          v_old, v = v, 0.9 * v - 0.02 * grad
          z = (z.detach() - 0.9 * v_old + 1.9 * v).clamp(-1, 1)
      else:  # KEDMI: Adam on (mu, logvar), one reparameterised sample a step
        mu, logvar = torch.zeros(batch, 100, requires_grad=True), torch.ones(batch, 100, requires_grad=True)
        opt = torch.optim.Adam([mu, logvar], lr=0.02)
        for _ in range(steps):
          opt.zero_grad()
          loss(mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)).backward()
          opt.step()

  return run


def main(argv):
  del argv
  config = networks.GanConfig(resolution=64, img_channels=3, width=_WIDTH.value, num_classes=CLASSES)
  batch, steps = _BATCH.value, _STEPS.value
  print(f'64 px, GAN width {_WIDTH.value}, VGG16-BN target (1000 classes), batch {batch}, {steps} steps a call')
  for method in ('gmi', 'kedmi'):
    rates = _timing.best_rates(
        {
            'jax': jax_runner(method, config, batch, steps),
            'torch': torch_runner(method, _WIDTH.value, batch, steps),
        },
        calls=1,
        repeats=_REPEATS.value,
        units_per_call=steps,
    )
    print(
        f'{method:6s} steps/s  jax {rates["jax"]:8.2f}  torch {rates["torch"]:8.2f}  '
        f'jax/torch {rates["jax"] / rates["torch"]:.2f}'
    )


if __name__ == '__main__':
  app.run(main)
