"""NVIDIA's StyleGAN2-ADA generator at one of our GeneratorConfigs, from a checkout the user names (never
copied into this repository): the PyTorch side of the generator benchmarks."""

import os
import sys


def official_generator(checkout: str, config, **synthesis_kwargs):
  """Its `training.networks.Generator` with `config`'s sizes (a stylegan.networks.GeneratorConfig), random
  weights, frozen, in eval mode; `synthesis_kwargs` beyond the channel counts are passed on as given."""
  sys.path.insert(0, os.path.abspath(checkout))
  from training import networks  # pylint: disable=g-import-not-at-top

  G = networks.Generator(
      z_dim=config.z_dim,
      c_dim=0,
      w_dim=config.w_dim,
      img_resolution=config.img_resolution,
      img_channels=config.img_channels,
      mapping_kwargs=dict(num_layers=config.mapping_layers),
      synthesis_kwargs=dict(channel_base=config.channel_base, channel_max=config.channel_max, **synthesis_kwargs),
  )
  return G.eval().requires_grad_(False)
