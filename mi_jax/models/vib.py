"""MID's variational information bottleneck head (Wang et al., AAAI 2021), around any target classifier.

MID's networks (Knowledge-Enriched-DMI's `VGG16_vib`, `IR152_vib`, `FaceNet64_vib`) end in

    features -> st_layer: Linear(d, 2k) -> mu, std = softplus(s - 5) -> z -> fc_layer: Linear(k, C)

with z = mu + std * eps in training and z = mu when predicting. Here the wrapped classifier's own head
plays st_layer (it is built with 2k outputs, keeping its name and initialisation), so the parameter tree is
the classifier's plus `vib_fc`: TTS transplants and weight importers see the names they know. In training
the module records (mu, std) in the VIB_COLLECTION, which MID's loss term reads (mi_jax/defenses/mid.py).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

VIB_COLLECTION = 'vib'  # (mu, std) of the bottleneck in training: apply with mutable=[VIB_COLLECTION]
STD_SHIFT = 5.0  # std = softplus(s - 5): the official code's shift (a small std at initialisation)


class VIBClassifier(nn.Module):
  """A classifier whose logits come from a sampled k-dimensional bottleneck (eval: its mean)."""

  backbone: nn.Module  # the target classifier, its head built with 2 * bottleneck outputs
  num_classes: int  # the classes of the final layer
  bottleneck: int  # k: MID's bottleneck width (the official code: half the feature width)
  dtype: Any = jnp.float32  # computation dtype

  def setup(self):
    nn.share_scope(self, self.backbone)  # the backbone's parameters stay at the top of the tree
    self.vib_fc = nn.Dense(self.num_classes, dtype=self.dtype)

  def __call__(self, x, train: bool = False):
    statistics = self.backbone(x, train=train)
    if isinstance(statistics, tuple):
      raise ValueError('MID: the wrapped classifier returns several heads (Inception-v3 aux_logits); turn them off')
    assert statistics.shape[-1] == 2 * self.bottleneck, statistics.shape
    mu, pre_std = jnp.split(statistics, 2, axis=-1)
    std = jax.nn.softplus(pre_std - STD_SHIFT)
    if train:
      z = mu + std * jax.random.normal(self.make_rng('dropout'), mu.shape, mu.dtype)
      self.sow(VIB_COLLECTION, 'mu', mu)
      self.sow(VIB_COLLECTION, 'std', std)
    else:
      z = mu
    return self.vib_fc(z)
