"""mi_jax: model-inversion attacks and skip-connection defenses in JAX/Flax.

import mi_jax
model, variables, config, step, metrics = mi_jax.load_classifier('workdir/baseline_demo', step='best')
logits = model.apply(variables, images, train=False)  # images in [-1, 1], NHWC
"""


def __getattr__(name):
  # Imported on use: `import mi_jax` stays light (no jax, orbax or flax until something is loaded).
  if name == 'load_classifier':
    from mi_jax.train import checkpoint  # pylint: disable=g-import-not-at-top

    return checkpoint.load_classifier
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
