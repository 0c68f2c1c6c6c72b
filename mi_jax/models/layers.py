"""Layers shared by the target families."""

import functools

import flax.linen as nn

BN_EPSILON = 1e-5


def batch_norm(train: bool, dtype):
  """torch BatchNorm2d defaults: eps 1e-5, momentum 0.1 (= Flax momentum 0.9)."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=BN_EPSILON, dtype=dtype)


# Collection and name under which models record their hidden features, in forward order
# (apply with mutable=[HIDDEN_COLLECTION]); BiDO regularises them.
HIDDEN_COLLECTION = 'intermediates'
HIDDEN_NAME = 'hidden'


def sow_hidden(module: nn.Module, x):
  """Records `x` as the module's next hidden feature (a no-op unless the collection is mutable)."""
  module.sow(HIDDEN_COLLECTION, HIDDEN_NAME, x)
