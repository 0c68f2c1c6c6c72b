"""Optimisers and learning-rate schedules from config.optim (optax)."""

import optax


def create_learning_rate_fn(optim_config, steps_per_epoch: int) -> optax.Schedule:
  """Step decay: lr * gamma at each milestone epoch (PyTorch MultiStepLR, stepped per epoch)."""
  boundaries = {}
  for milestone in optim_config.lr_milestones:  # a repeated milestone decays twice, as in MultiStepLR
    step = int(milestone * steps_per_epoch)
    boundaries[step] = boundaries.get(step, 1.0) * optim_config.lr_gamma
  return optax.piecewise_constant_schedule(optim_config.lr, boundaries)


def create_optimizer(optim_config, learning_rate_fn: optax.Schedule) -> optax.GradientTransformation:
  name = optim_config.name
  wd = optim_config.weight_decay
  if name == 'adam':
    # torch.optim.Adam: weight decay is an L2 term added to the gradient before the moments.
    return optax.chain(
        optax.add_decayed_weights(wd) if wd else optax.identity(),
        optax.adam(learning_rate_fn, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps),
    )
  if name == 'adamw':
    return optax.adamw(learning_rate_fn, b1=optim_config.b1, b2=optim_config.b2, eps=optim_config.eps, weight_decay=wd)
  if name == 'sgd':
    return optax.chain(
        optax.add_decayed_weights(wd) if wd else optax.identity(),
        optax.sgd(learning_rate_fn, momentum=optim_config.momentum or None, nesterov=False),
    )
  raise ValueError(f"config.optim.name={name!r}: expected 'adam', 'adamw' or 'sgd'")
