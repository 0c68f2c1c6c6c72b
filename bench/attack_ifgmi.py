"""IF-GMI's optimisation step rate relative to PPA's, on the same generator, target and batch, in one run.

  python bench/attack_ifgmi.py                 # the demo and the large setup of bench/attack_step.py
  python bench/attack_ifgmi.py --sizes=demo

PPA's step (w through the whole synthesis network) against IF-GMI's stage s >= 1 step (w and the
features entering block s, with both l1-ball projections), each a jitted scan of Adam steps over one
global batch on one device; random weights (bench/attack_step.py's setups). A later stage runs fewer
blocks but projects a larger feature map (a sort per sample): the table shows which wins where.
"""

import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=8').strip()

from absl import app  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from mi_jax.attacks import ifgmi, optimize  # pylint: disable=g-import-not-at-top
from mi_jax.stylegan import networks  # pylint: disable=g-import-not-at-top
import _timing  # pylint: disable=g-import-not-at-top  # bench/, beside this script
import attack_step  # pylint: disable=g-import-not-at-top  # its setups and flags (--sizes, --batch, --steps, --repeats)


def build(setup, batch: int, steps: int):
  """{'ppa': run, 'stage s': run, ...}: run(n) makes n calls of that step's jitted scan and waits."""
  G, gen_vars, classify, zeros, settings = attack_step.build_world(setup, steps)
  gen_config = G.config
  w0 = jnp.asarray(np.random.default_rng(0).standard_normal((batch, gen_config.w_dim)), jnp.float32)
  targets, valid, key = jnp.arange(batch, dtype=jnp.int32) % 10, jnp.ones(batch, bool), jax.random.key(0)
  num_blocks = len(networks.block_resolutions(gen_config.img_resolution))

  def timed(fn, params):
    fn = jax.jit(fn)

    def run(n):
      for _ in range(n):
        out = fn(params, targets, valid, key)
      jax.block_until_ready(out)

    return run

  synthesize = lambda w: G.apply(gen_vars, w[:, None], method=G.synthesize)
  runs = {'ppa': timed(optimize.make_optimize_fn(synthesize, classify, zeros, settings), w0)}
  for stage in range(1, num_blocks):
    feature, _ = G.apply(gen_vars, w0[:, None], (0, stage), method=G.synthesize_blocks)
    render = lambda p, s=stage: G.apply(
        gen_vars, p['w'][:, None], (s, num_blocks), p['feature'], None, method=G.synthesize_blocks
    )[1]
    constrain = ifgmi.l1_ball_constraint({'w': 1000.0, 'feature': 1.0})  # a binding ball: the projection runs
    fn = optimize.make_optimize_fn(render, classify, zeros, settings, constrain)
    runs[f'stage {stage}'] = timed(fn, {'w': w0, 'feature': feature})
  return runs


def main(argv):
  del argv
  batch, steps = attack_step._BATCH.value, attack_step._STEPS.value  # pylint: disable=protected-access
  print(f'jax {jax.__version__} on {jax.devices()[0].platform}; one device, batch {batch}, {steps} steps per call')
  for name in attack_step._SIZES.value:  # pylint: disable=protected-access
    runs = build(attack_step.SETUPS[name], batch, steps)
    best = _timing.best_rates(runs, 1, attack_step._REPEATS.value, units_per_call=batch * steps)  # pylint: disable=protected-access
    print(f'{name}: latent-steps/s (ratio to PPA)')
    for variant, rate in best.items():
      print(f'  {variant:<9}{rate:>10.1f}{rate / best["ppa"]:>8.2f}', flush=True)


if __name__ == '__main__':
  app.run(main)
