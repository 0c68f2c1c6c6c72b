"""Weight importers: files the user names in the config, converted with parity tests."""

import os

from absl import logging

from mi_jax.convert import torchvision
from mi_jax.defenses import transplant


def init_from_file(model_config, fresh: dict, as_is: bool = False) -> dict:
  """The variables to start training from: config.model.init_file merged into `fresh`.

  `as_is` (train.epochs = 0): the file is the finished model, so every leaf must come from it,
  the head included (config.model.init_reinit is not applied).
  """
  path = os.path.expanduser(model_config.init_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.model.init_file={model_config.init_file!r} is not a file')
  converted = torchvision.to_flax(torchvision.read_state_dict(path), torchvision.kind_of(model_config.name))
  drop = () if model_config.get('aux_logits', False) else ('AuxLogits',)  # a head this model does not have
  try:
    variables, report = torchvision.merge_into(
        converted, fresh, reinit=() if as_is else tuple(model_config.init_reinit), drop=drop
    )
  except transplant.TransplantError as e:
    if not as_is:
      raise
    mismatches = [line for line in str(e).splitlines() if line.startswith('  ')]
    raise transplant.TransplantError(
        f'config.model.init_file={model_config.init_file!r} does not hold the model config.model describes '
        f'({model_config.name}, num_classes={model_config.num_classes}, aux_logits='
        f'{model_config.get("aux_logits", False)}); train.epochs=0 uses the file as it is, so every weight must '
        'come from it. What does not fit:\n' + '\n'.join(mismatches)
    ) from None
  logging.info('Initialised %s from %s: %s', model_config.name, path, report.summary())
  return variables
