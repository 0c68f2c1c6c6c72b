"""RepVGG: folding the skip branches away at inference leaves an attacker the same gradients.

A RepVGG block is BN(W3 * x) + BN(W1 * x) + BN(x) in training form; in eval mode every
branch is affine in x, so `repvgg.reparameterize` merges them into one 3x3 conv. The deployed
plain network computes the same function, hence the same dL/dx and the same dL/dz_i at every
stage input: the identity branch's gradient now flows through the folded kernel's centre tap.
Removing the identity branch (skip 0) is what changes the gradients.

`repvgg_equivalence` measures this on one network with random weights and non-trivial BN
statistics (as after training), with PPA's Poincaré loss towards a target class.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from mi_jax.analysis import plots
from mi_jax.attacks import losses
from mi_jax.models import repvgg


def _randomised(variables, seed):
  key = jax.random.PRNGKey(seed)
  leaves, treedef = jax.tree.flatten(variables['params'])
  keys = jax.random.split(key, len(leaves) + 1)
  params = jax.tree.unflatten(
      treedef, [jax.random.uniform(k, x.shape, x.dtype, -0.5, 0.5) for k, x in zip(keys[1:], leaves)]
  )
  stats = jax.tree.map(lambda x: x, variables['batch_stats'])
  for i, (name, entry) in enumerate(sorted(stats.items())):
    if 'mean' in entry:
      k1, k2 = jax.random.split(jax.random.fold_in(keys[0], i))
      stats[name] = {
          'mean': jax.random.uniform(k1, entry['mean'].shape, minval=-0.3, maxval=0.3),
          'var': jax.random.uniform(k2, entry['var'].shape, minval=0.5, maxval=1.5),
      }
  return {'params': params, 'batch_stats': stats}


def repvgg_equivalence(
    name: str = 'repvgg_a0',
    width: int = 8,
    image_size: int = 32,
    num_classes: int = 5,
    batch: int = 4,
    seed: int = 0,
    num_blocks=None,
) -> dict:
  """Per-stage ||dL/dz_i|| of the training form, the deployed form and the no-identity form, and the largest
  relative difference of dL/dx between training and deployed forms (float64). `num_blocks` overrides the
  architecture's blocks per stage (tests)."""
  default_blocks, multiplier = repvgg.REPVGG_CONFIGS[name]
  num_blocks = tuple(num_blocks or default_blocks)
  make = functools.partial(
      repvgg.RepVGG,
      num_blocks=num_blocks,
      width_multiplier=multiplier,
      num_classes=num_classes,
      width=width,
      dtype=jnp.float64,
  )
  with jax.enable_x64(True):
    train_model = make()
    x = jax.random.normal(jax.random.PRNGKey(seed + 1), (batch, image_size, image_size, 3), jnp.float64)
    # One compilation for init and randomisation (eagerly, every small op of a deep net compiles alone).
    variables = jax.jit(
        lambda: jax.tree.map(
            lambda a: jnp.asarray(a, jnp.float64), _randomised(train_model.init(jax.random.PRNGKey(seed), x), seed + 2)
        )
    )()
    forms = {
        'training form (skips)': (train_model, variables),
        'deployed form (folded)': (make(deploy=True), repvgg.reparameterize(jax.device_get(variables))),
        'identity branches removed': (make(skip=(0.0,) * 4), variables),
    }
    targets = jnp.arange(batch) % num_classes
    results = {'model': name, 'stage_grad_norm': {}, 'input_grad': {}}
    for label, (model, v) in forms.items():
      _, shapes = jax.eval_shape(lambda: model.apply(v, x, mutable=['perturbations']))
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes['perturbations'])

      def loss(images, perturbations, model=model, v=v):
        logits = model.apply({**v, 'perturbations': perturbations}, images)
        return jnp.sum(losses.poincare_loss(logits, targets))

      gx, gz = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, zeros)
      results['input_grad'][label] = np.asarray(gx)
      results['stage_grad_norm'][label] = {
          k: float(jnp.mean(jnp.linalg.norm(g.reshape(batch, -1), axis=1))) for k, g in sorted(gz.items())
      }
  reference = results['input_grad']['training form (skips)']
  scale = float(np.abs(reference).max())
  results['max_rel_diff_deployed'] = float(
      np.abs(results['input_grad']['deployed form (folded)'] - reference).max() / scale
  )
  results['max_rel_diff_removed'] = float(
      np.abs(results['input_grad']['identity branches removed'] - reference).max() / scale
  )
  del results['input_grad']
  return results


def plot_repvgg_equivalence(path: str, results: dict):
  norms = results['stage_grad_norm']
  stages = list(next(iter(norms.values())))
  note = (
      f'max |dL/dx| difference / max |dL/dx|: deployed {results["max_rel_diff_deployed"]:.1e}, '
      f'identity removed {results["max_rel_diff_removed"]:.1e}\n({results["model"]}, random weights, float64)'
  )
  return plots.grouped_bars(
      path,
      [s.replace('_input', '') for s in stages],
      {label: [v[s] for s in stages] for label, v in norms.items()},
      'RepVGG: folding the skips away keeps the gradients',
      'mean ||dL/dz|| at stage input',
      log_scale=True,
      note=note,
  )
