"""Weight importers: files the user names in the config, converted with parity tests."""

import os

from absl import logging

from mi_jax.convert import torchvision


def init_from_file(model_config, fresh: dict) -> dict:
  """The variables to start training from: config.model.init_file merged into `fresh`."""
  path = os.path.expanduser(model_config.init_file)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config.model.init_file={model_config.init_file!r} is not a file')
  converted = torchvision.to_flax(torchvision.read_state_dict(path), torchvision.kind_of(model_config.name))
  variables, report = torchvision.merge_into(converted, fresh, reinit=tuple(model_config.init_reinit),
                                             drop=('AuxLogits',))  # Inception-v3's auxiliary head
  logging.info('Initialised %s from %s: %s', model_config.name, path, report.summary())
  return variables
