"""Layers shared by the target families."""

import functools

import flax.linen as nn

BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype):
  """torch BatchNorm2d defaults: eps 1e-5, momentum 0.1 (= Flax momentum 0.9)."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON,
                           dtype=dtype)
