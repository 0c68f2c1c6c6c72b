"""RepVGG (Ding et al., CVPR 2021): training-time skip branches folded away at inference.

A training-time block computes relu(BN(conv3x3(x)) + BN(conv1x1(x)) + k * BN(x)),
the identity branch existing where the block keeps shape (stride 1, same width).
In eval mode every branch is affine in x, so `reparameterize` folds the three
into one 3x3 conv with bias: the deploy network is a plain VGG-style chain.
Because the deploy function equals the training one for every x, so does its
input gradient: folding skips away at inference hands an MI attacker exactly
the gradients of the multi-branch model (tests/test_models.py checks both).

`skip` scales the identity branch per stage (1 keep, 0 remove, k in between),
as for the other targets; stage 0 is the single-block stem.
"""

import functools
from typing import Any, Sequence

from flax import traverse_util
import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from mi_jax.models import layers
from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

BN_EPSILON = layers.BN_EPSILON


def _conv(features, kernel, strides, use_bias, dtype, name):
  pad = kernel // 2
  return ops.Conv(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=((pad, pad), (pad, pad)),
      use_bias=use_bias,
      dtype=dtype,
      name=name,
  )


class RepVGGBlock(nn.Module):
  features: int
  strides: int
  skip_scale: float  # Identity-branch factor (fixed: RepVGG is for the folding argument, not SSF).
  deploy: bool  # True: the folded single 3x3 conv.
  norm: Any
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.deploy:
      return nn.relu(_conv(self.features, 3, self.strides, True, self.dtype, 'rbr_reparam')(x))
    y = self.norm(name='rbr_dense_bn')(_conv(self.features, 3, self.strides, False, self.dtype, 'rbr_dense_conv')(x))
    y = y + self.norm(name='rbr_1x1_bn')(_conv(self.features, 1, self.strides, False, self.dtype, 'rbr_1x1_conv')(x))
    if has_identity(x.shape[-1], self.features, self.strides):
      identity = self.norm(name='rbr_identity')(x)  # kept at k = 0 too: the tree must not depend on skip
      if self.skip_scale != 0.0:
        y = y + self.skip_scale * identity
    return nn.relu(y)


def has_identity(in_features: int, features: int, strides: int) -> bool:
  return in_features == features and strides == 1


class RepVGG(nn.Module):
  num_blocks: Sequence[int]  # Blocks in stages 1-4 (the stem is stage 0, one block).
  width_multiplier: Sequence[float]  # (a, b): stage widths 64a, 128a, 256a, 512b; stem min(64, 64a).
  num_classes: int
  skip: Sequence[Any] = (1.0, 1.0, 1.0, 1.0)  # Identity-branch factor of stages 1-4.
  deploy: bool = False
  width: int = 0  # Demos: stage-1 width (0 = 64a); later stages scale with it.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    skip_lib.check_count(self.skip, len(self.num_blocks))
    norm = layers.batch_norm(train, self.dtype)
    a, b = self.width_multiplier
    base = self.width or int(64 * a)
    widths = [base, 2 * base, 4 * base, int(512 * b * base / (64 * a))]
    block = functools.partial(RepVGGBlock, deploy=self.deploy, norm=norm, dtype=self.dtype)
    x = jnp.asarray(x, self.dtype)
    x = block(min(64, base), 2, 1.0, name='stage0')(x)
    for i, n in enumerate(self.num_blocks):
      kind, k = skip_lib.parse_skip(self.skip[i])
      if kind != 'fixed':
        raise ValueError('RepVGG takes fixed identity-branch factors only')
      x = self.perturb(f'stage{i + 1}_input', x)
      for j in range(n):
        x = block(widths[i], 2 if j == 0 else 1, k, name=f'stage{i + 1}_{j}')(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype, name='linear')(x)


def _fuse(kernel, bn_params, bn_stats):
  """Conv kernel [kh, kw, I, O] followed by eval-mode BN -> (kernel, bias)."""
  std = np.sqrt(np.asarray(bn_stats['var'], np.float64) + BN_EPSILON)
  scale = np.asarray(bn_params['scale'], np.float64) / std
  bias = np.asarray(bn_params['bias'], np.float64) - np.asarray(bn_stats['mean'], np.float64) * scale
  return np.asarray(kernel, np.float64) * scale, bias


def reparameterize(variables: dict, skip: Sequence[Any] = (1.0, 1.0, 1.0, 1.0)) -> dict:
  """Training-form {'params', 'batch_stats'} -> deploy-form {'params'} (computed in float64)."""
  params = traverse_util.flatten_dict(variables['params'], sep='/')
  stats = traverse_util.flatten_dict(variables['batch_stats'], sep='/')
  blocks = sorted({p.split('/')[0] for p in params if p.startswith('stage')})
  out = {'linear/kernel': params['linear/kernel'], 'linear/bias': params['linear/bias']}
  for name in blocks:
    sub = lambda prefix, tree: {k.split('/')[-1]: v for k, v in tree.items() if k.startswith(f'{name}/{prefix}/')}
    dense = _fuse(params[f'{name}/rbr_dense_conv/kernel'], sub('rbr_dense_bn', params), sub('rbr_dense_bn', stats))
    one, one_bias = _fuse(params[f'{name}/rbr_1x1_conv/kernel'], sub('rbr_1x1_bn', params), sub('rbr_1x1_bn', stats))
    kernel = dense[0].copy()
    kernel[1, 1] += one[0, 0]  # a 1x1 conv is a 3x3 conv with only the centre tap
    bias = dense[1] + one_bias
    stage = 0 if name == 'stage0' else int(name[len('stage')])
    k = 1.0 if stage == 0 else skip_lib.parse_skip(skip[stage - 1])[1]
    if f'{name}/rbr_identity/scale' in params and k != 0.0:
      channels = kernel.shape[-1]
      identity = np.zeros((3, 3, channels, channels))
      identity[1, 1] = np.eye(channels)  # identity as a centred Dirac kernel
      id_kernel, id_bias = _fuse(identity, sub('rbr_identity', params), sub('rbr_identity', stats))
      kernel, bias = kernel + k * id_kernel, bias + k * id_bias
    dtype = np.asarray(params[f'{name}/rbr_dense_conv/kernel']).dtype
    out[f'{name}/rbr_reparam/kernel'] = kernel.astype(dtype)
    out[f'{name}/rbr_reparam/bias'] = bias.astype(dtype)
  return {'params': traverse_util.unflatten_dict(out, sep='/')}


REPVGG_CONFIGS = {
    'repvgg_a0': ((2, 4, 14, 1), (0.75, 2.5)),
    'repvgg_a1': ((2, 4, 14, 1), (1.0, 2.5)),
    'repvgg_b0': ((4, 6, 16, 1), (1.0, 2.5)),
}


def _build(model_config, architecture, dtype, deploy):
  skip = tuple(model_config.skip)
  if any(isinstance(s, str) for s in skip):
    raise ValueError('config.model.skip: RepVGG takes fixed identity-branch factors only')
  num_blocks, multiplier = architecture
  return RepVGG(
      num_blocks=num_blocks,
      width_multiplier=multiplier,
      num_classes=model_config.num_classes,
      skip=skip,
      deploy=deploy,
      width=model_config.width,
      dtype=dtype,
  )


FAMILY = registry.Family(
    name='repvgg', architectures=REPVGG_CONFIGS, build=_build, num_stages=lambda architecture: len(architecture[0])
)
