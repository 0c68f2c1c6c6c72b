"""StyleGAN2(-ADA) generator and discriminator in Flax, NHWC.

Modules map one to one to NVlabs/stylegan2-ada-pytorch's training/networks.py (Karras et al. 2020)
and carry its parameter names, so an imported pickle is a plain re-layout:

  mapping/fc{i}/{kernel [in, out], bias}               buffers: mapping/w_avg
  synthesis/b{R}/const [4, 4, C]
  synthesis/b{R}/conv{0,1}/{kernel [3, 3, I, O], bias, noise_strength, affine/{kernel, bias}}
                                                       buffers: synthesis/b{R}/conv{0,1}/noise_const [R, R]
  synthesis/b{R}/torgb/{kernel [1, 1, C, img_channels], bias, affine/{kernel, bias}}

Weights are stored raw (as initialised, N(0, 1/lr_multiplier^2)) and every gain is
applied at call time (equalized learning rate), as in the reference. Non-trainable
arrays live in the 'buffers' collection so gradients never touch them.
"""

import dataclasses
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from . import ops

Dtype = Any
NOISE_MODES = ('const', 'random', 'none')


def normalize_2nd_moment(x: jax.Array, axis: int = 1, eps: float = 1e-8) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=axis, keepdims=True) + eps)


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
  return min(channel_base // resolution, channel_max)


def block_resolutions(img_resolution: int) -> list[int]:
  log2 = int(np.log2(img_resolution))
  if img_resolution != 2**log2 or img_resolution < 4:
    raise ValueError(f'img_resolution={img_resolution}: expected a power of two >= 4')
  return [2**i for i in range(2, log2 + 1)]


def num_ws_for(img_resolution: int) -> int:
  """Number of per-layer ws: two convs per block (one in b4) plus the last ToRGB."""
  return 2 * len(block_resolutions(img_resolution))


# ----------------------------------------------------------------------------
# Layers with equalized learning rate.


class FullyConnectedLayer(nn.Module):
  features: int  # Output features.
  activation: str = 'linear'  # 'linear', 'relu' or 'lrelu'.
  lr_multiplier: float = 1.0  # Learning-rate multiplier (the mapping network uses 0.01).
  bias_init: float = 0.0  # Initial value of the (un-scaled) bias.
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_features = x.shape[-1]
    kernel = self.param('kernel', nn.initializers.normal(1.0 / self.lr_multiplier), (in_features, self.features))
    weight_gain = self.lr_multiplier / math.sqrt(in_features)
    x = x @ (kernel * weight_gain).astype(x.dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.initializers.constant(self.bias_init), (self.features,)) * self.lr_multiplier
    return ops.bias_act(x, bias, act=self.activation)


class Conv2dLayer(nn.Module):
  """Plain conv with equalized LR and optional FIR down/upsampling (discriminator, resnet skips)."""

  out_channels: int  # Output channels.
  kernel_size: int  # Width and height of the kernel.
  activation: str = 'linear'  # Activation after the bias.
  use_bias: bool = True
  up: int = 1  # Upsampling factor.
  down: int = 1  # Downsampling factor.
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter taps for resampling.
  conv_clamp: float | None = None  # Clamp the output to +-X; None = off.
  gain: float = 1.0  # Extra output gain (resnet branches use sqrt(0.5)).
  dtype: Dtype = jnp.float32  # Compute dtype.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    in_channels = x.shape[-1]
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.normal(1.0), (k, k, in_channels, self.out_channels))
    weight_gain = 1.0 / math.sqrt(in_channels * k * k)
    x = ops.conv2d_resample(
        x.astype(self.dtype),
        (kernel * weight_gain).astype(self.dtype),
        f=ops.setup_filter(self.resample_filter),
        up=self.up,
        down=self.down,
        padding=k // 2,
    )
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,)) if self.use_bias else None
    act_gain = ops.ACTIVATIONS[self.activation][1] * self.gain
    clamp = self.conv_clamp * self.gain if self.conv_clamp is not None else None
    return ops.bias_act(x, bias, act=self.activation, gain=act_gain, clamp=clamp)


# ----------------------------------------------------------------------------
# Mapping network.


class MappingNetwork(nn.Module):
  z_dim: int  # Input latent (Z) dimensionality; 0 = no latent.
  c_dim: int  # Conditioning label (C) dimensionality; 0 = no label.
  w_dim: int  # Intermediate latent (W) dimensionality.
  num_ws: int  # Number of ws to broadcast to.
  num_layers: int = 8  # Number of fully connected layers.
  embed_features: int | None = None  # Label embedding dimensionality; None = w_dim.
  layer_features: int | None = None  # Hidden layer width; None = w_dim.
  activation: str = 'lrelu'  # Hidden activation.
  lr_multiplier: float = 0.01  # Learning-rate multiplier of every layer.
  w_avg_beta: float | None = 0.995  # Decay of the running average of W (truncation centre); None = no w_avg.

  @nn.compact
  def __call__(
      self,
      z: jax.Array,  # [N, z_dim] latents.
      c: jax.Array | None = None,  # [N, c_dim] labels.
      truncation_psi: float | jax.Array = 1.0,  # 1 = no truncation; may be traced.
      truncation_cutoff: int | jax.Array | None = None,  # Truncate ws[:, :cutoff] only; None = all.
      update_w_avg: bool = False,  # Training: track the running mean of w ('buffers' mutable).
  ) -> jax.Array:
    embed_features = self.w_dim if self.embed_features is None else self.embed_features
    layer_features = self.w_dim if self.layer_features is None else self.layer_features
    parts = []
    if self.z_dim > 0:
      assert z.shape[1:] == (self.z_dim,), (z.shape, self.z_dim)
      parts.append(normalize_2nd_moment(z.astype(jnp.float32)))
    if self.c_dim > 0:
      assert c is not None and c.shape[1:] == (self.c_dim,), (None if c is None else c.shape, self.c_dim)
      y = FullyConnectedLayer(embed_features, name='embed')(c.astype(jnp.float32))
      parts.append(normalize_2nd_moment(y))
    x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]

    for i in range(self.num_layers):
      features = self.w_dim if i == self.num_layers - 1 else layer_features
      x = FullyConnectedLayer(features, activation=self.activation, lr_multiplier=self.lr_multiplier, name=f'fc{i}')(x)

    w_avg = None
    if self.w_avg_beta is not None:
      w_avg = self.variable('buffers', 'w_avg', jnp.zeros, (self.w_dim,))
      if update_w_avg and not self.is_initializing():
        batch_mean = jnp.mean(x, axis=0)
        w_avg.value = batch_mean + self.w_avg_beta * (w_avg.value - batch_mean)

    ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, self.w_dim))
    if isinstance(truncation_psi, (int, float)) and truncation_psi == 1:
      return ws
    if w_avg is None:
      raise ValueError('truncation needs w_avg, but this mapping network has w_avg_beta=None')
    truncated = w_avg.value + truncation_psi * (ws - w_avg.value)
    if truncation_cutoff is None:
      return truncated
    layer = jnp.arange(self.num_ws)[None, :, None]
    return jnp.where(layer < truncation_cutoff, truncated, ws)


# ----------------------------------------------------------------------------
# Synthesis network.


class SynthesisLayer(nn.Module):
  out_channels: int  # Output channels.
  resolution: int  # Output resolution.
  kernel_size: int = 3  # Convolution kernel size.
  up: int = 1  # 1 or 2 (first conv of a block).
  use_noise: bool = True  # Per-pixel noise input.
  activation: str = 'lrelu'  # Activation after bias and noise.
  resample_filter: Sequence[float] = (1, 3, 3, 1)  # Low-pass filter for upsampling.
  conv_clamp: float | None = None  # Clamp the output to +-X; None = off.
  dtype: Dtype = jnp.float32  # Compute dtype of the conv (styles and demodulation stay fp32).

  @nn.compact
  def __call__(
      self,
      x: jax.Array,  # [N, H, W, I] features.
      w: jax.Array,  # [N, w_dim] this layer's w.
      noise_mode: str = 'const',  # 'const' (stored buffer), 'random' (rng 'noise') or 'none'.
  ) -> jax.Array:
    in_channels = x.shape[-1]
    assert x.shape[1:3] == (self.resolution // self.up,) * 2, (x.shape, self.resolution, self.up)
    styles = FullyConnectedLayer(in_channels, bias_init=1.0, name='affine')(w)
    kernel = self.param(
        'kernel', nn.initializers.normal(1.0), (self.kernel_size, self.kernel_size, in_channels, self.out_channels)
    )
    noise = None
    if self.use_noise:
      noise_const = self.variable(
          'buffers', 'noise_const', lambda: jax.random.normal(self.make_rng('params'), (self.resolution,) * 2)
      )
      noise_strength = self.param('noise_strength', nn.initializers.zeros, ())
      if noise_mode == 'const':
        noise = (noise_const.value * noise_strength)[None, :, :, None]
      elif noise_mode == 'random':
        noise = jax.random.normal(self.make_rng('noise'), (x.shape[0], self.resolution, self.resolution, 1))
        noise = noise * noise_strength
      elif noise_mode != 'none':
        raise ValueError(f'noise_mode={noise_mode!r}: expected one of {NOISE_MODES}')
    x = ops.modulated_conv2d(
        x.astype(self.dtype),
        kernel,
        styles,
        noise=noise,
        up=self.up,
        padding=self.kernel_size // 2,
        resample_filter=ops.setup_filter(self.resample_filter),
    )
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    return ops.bias_act(x, bias, act=self.activation, clamp=self.conv_clamp)


class ToRGBLayer(nn.Module):
  out_channels: int  # Image channels.
  kernel_size: int = 1
  conv_clamp: float | None = None  # Clamp the output to +-X; None = off.
  dtype: Dtype = jnp.float32  # Compute dtype of the conv.

  @nn.compact
  def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
    in_channels = x.shape[-1]
    weight_gain = 1.0 / math.sqrt(in_channels * self.kernel_size**2)  # on the styles: no demodulation here
    styles = FullyConnectedLayer(in_channels, bias_init=1.0, name='affine')(w) * weight_gain
    kernel = self.param(
        'kernel', nn.initializers.normal(1.0), (self.kernel_size, self.kernel_size, in_channels, self.out_channels)
    )
    x = ops.modulated_conv2d(x.astype(self.dtype), kernel, styles, demodulate=False)
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    return ops.bias_act(x.astype(ops.accumulation_dtype(self.dtype)), bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution of the 'skip' architecture: [const | conv0 (up 2)], conv1, torgb; img += torgb."""

  out_channels: int  # Feature channels of this block.
  resolution: int  # This block's resolution.
  img_channels: int  # Image channels.
  is_first: bool  # b4: starts from the learned constant.
  resample_filter: Sequence[float] = (1, 3, 3, 1)
  conv_clamp: float | None = None
  use_noise: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      x: jax.Array | None,  # [N, R/2, R/2, C_in] features of the previous block (None for b4).
      img: jax.Array | None,  # [N, R/2, R/2, img_channels] image so far (None for b4).
      ws: jax.Array,  # [N, num_conv + 1, w_dim] this block's ws.
      noise_mode: str = 'const',
  ) -> tuple[jax.Array, jax.Array]:
    layer = dict(
        resolution=self.resolution,
        resample_filter=self.resample_filter,
        conv_clamp=self.conv_clamp,
        use_noise=self.use_noise,
        dtype=self.dtype,
    )
    if self.is_first:
      const = self.param('const', nn.initializers.normal(1.0), (4, 4, self.out_channels))
      x = jnp.broadcast_to(const[None], (ws.shape[0], 4, 4, self.out_channels))
      x = SynthesisLayer(self.out_channels, name='conv1', **layer)(x, ws[:, 0], noise_mode)
    else:
      x = SynthesisLayer(self.out_channels, up=2, name='conv0', **layer)(x, ws[:, 0], noise_mode)
      x = SynthesisLayer(self.out_channels, name='conv1', **layer)(x, ws[:, 1], noise_mode)
    y = ToRGBLayer(self.img_channels, conv_clamp=self.conv_clamp, dtype=self.dtype, name='torgb')(x, ws[:, -1])
    if img is not None:
      img = ops.upsample2d(img, ops.setup_filter(self.resample_filter))
      y = img + y
    return x, y  # the image stays (at least) float32 whatever the compute dtype


class SynthesisNetwork(nn.Module):
  w_dim: int  # Intermediate latent (W) dimensionality.
  img_resolution: int  # Output resolution.
  img_channels: int  # Number of output color channels.
  channel_base: int = 32768  # Overall multiplier for the number of channels.
  channel_max: int = 512  # Maximum number of channels in any layer.
  conv_clamp: float | None = None  # Clamp conv outputs to +-X; None = off.
  resample_filter: Sequence[float] = (1, 3, 3, 1)
  use_noise: bool = True
  dtype: Dtype = jnp.float32  # Compute dtype of the convs (jnp.bfloat16 for the fast path).

  @property
  def num_ws(self) -> int:
    return num_ws_for(self.img_resolution)

  @nn.compact
  def __call__(
      self,
      ws: jax.Array,  # [N, num_ws, w_dim]: every layer's w.
      noise_mode: str = 'const',  # 'const', 'random' or 'none'.
      blocks: tuple[int, int] | None = None,  # Run only blocks [start, stop) (b4 is block 0); None = all.
      block_input: jax.Array | None = None,  # Features entering block `start` (None when start = 0).
      skip_image: jax.Array | None = None,  # Image accumulated before block `start`; None: start from its ToRGB.
  ):
    """All blocks: [N, R, R, img_channels] image (float32 unless float64), roughly in [-1, 1].

    With `blocks`: (features leaving block stop - 1, image so far), from `block_input` entering block
    start. IF-GMI optimises those intermediate features; as its code does, an image accumulation begun
    at block start omits the ToRGB outputs of the blocks before it unless `skip_image` carries them.
    """
    if ws.ndim != 3 or ws.shape[1:] != (self.num_ws, self.w_dim):
      raise ValueError(f'ws has shape {ws.shape}; this synthesis network takes [N, {self.num_ws}, {self.w_dim}]')
    if noise_mode not in NOISE_MODES:
      raise ValueError(f'noise_mode={noise_mode!r}: expected one of {NOISE_MODES}')
    resolutions = block_resolutions(self.img_resolution)
    start, stop = blocks or (0, len(resolutions))
    if not 0 <= start < stop <= len(resolutions):
      raise ValueError(f'blocks={blocks}: expected 0 <= start < stop <= {len(resolutions)}')
    if (block_input is None) != (start == 0):
      raise ValueError(f'block_input is needed exactly when the blocks start after b4 (start={start})')
    ws = ws.astype(ops.accumulation_dtype(ws.dtype))
    x, img = block_input, skip_image
    w_idx = 0
    for index, res in enumerate(resolutions):
      num_conv = 1 if res == 4 else 2
      if start <= index < stop:
        block = SynthesisBlock(
            channels_at(res, self.channel_base, self.channel_max),
            res,
            self.img_channels,
            is_first=res == 4,
            resample_filter=self.resample_filter,
            conv_clamp=self.conv_clamp,
            use_noise=self.use_noise,
            dtype=self.dtype,
            name=f'b{res}',
        )
        if x is not None:
          assert x.shape[1:3] == (res // 2, res // 2), (res, x.shape)
        # The block's ToRGB shares its w with the next block's first conv.
        x, img = block(x, img, ws[:, w_idx : w_idx + num_conv + 1], noise_mode)
      w_idx += num_conv
    if blocks is not None:
      return x, img
    assert img.shape[1:] == (self.img_resolution, self.img_resolution, self.img_channels), img.shape
    return img


# ----------------------------------------------------------------------------
# Generator.


@dataclasses.dataclass(frozen=True)
class GeneratorConfig:
  """Everything that defines a generator's architecture; saved as JSON next to its weights."""

  z_dim: int = 512  # Input latent (Z) dimensionality.
  c_dim: int = 0  # Conditioning label dimensionality; 0 = unconditional.
  w_dim: int = 512  # Intermediate latent (W) dimensionality.
  img_resolution: int = 1024  # Output resolution.
  img_channels: int = 3  # Output color channels.
  mapping_layers: int = 8  # Mapping network depth.
  mapping_lr_multiplier: float = 0.01
  w_avg_beta: float | None = 0.995
  channel_base: int = 32768
  channel_max: int = 512
  conv_clamp: float | None = None
  use_noise: bool = True
  resample_filter: tuple[float, ...] = (1, 3, 3, 1)

  @classmethod
  def from_dict(cls, d: dict) -> 'GeneratorConfig':
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f'unknown generator config fields {unknown}; known: {sorted(known)}')
    d = dict(d)
    if 'resample_filter' in d:
      d['resample_filter'] = tuple(d['resample_filter'])
    return cls(**d)

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    d['resample_filter'] = list(self.resample_filter)
    return d

  @property
  def num_ws(self) -> int:
    return num_ws_for(self.img_resolution)


class Generator(nn.Module):
  """z (+ c) -> mapping -> ws -> synthesis -> image. Use `map` and `synthesize` for the halves."""

  config: GeneratorConfig
  dtype: Dtype = jnp.float32  # Compute dtype of synthesis convs.

  def setup(self):
    cfg = self.config
    self.mapping = MappingNetwork(
        z_dim=cfg.z_dim,
        c_dim=cfg.c_dim,
        w_dim=cfg.w_dim,
        num_ws=cfg.num_ws,
        num_layers=cfg.mapping_layers,
        lr_multiplier=cfg.mapping_lr_multiplier,
        w_avg_beta=cfg.w_avg_beta,
    )
    self.synthesis = SynthesisNetwork(
        w_dim=cfg.w_dim,
        img_resolution=cfg.img_resolution,
        img_channels=cfg.img_channels,
        channel_base=cfg.channel_base,
        channel_max=cfg.channel_max,
        conv_clamp=cfg.conv_clamp,
        resample_filter=cfg.resample_filter,
        use_noise=cfg.use_noise,
        dtype=self.dtype,
    )

  def map(self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False) -> jax.Array:
    """[N, z_dim] -> [N, num_ws, w_dim]."""
    return self.mapping(z, c, truncation_psi, truncation_cutoff, update_w_avg)

  def synthesize(self, ws: jax.Array, noise_mode: str = 'const') -> jax.Array:
    """[N, num_ws, w_dim] (or [N, 1, w_dim], broadcast to every layer) -> [N, R, R, img_channels]."""
    if ws.ndim == 3 and ws.shape[1] == 1:
      ws = jnp.broadcast_to(ws, (ws.shape[0], self.config.num_ws, ws.shape[2]))
    return self.synthesis(ws, noise_mode)

  def synthesize_blocks(
      self,
      ws: jax.Array,  # [N, num_ws, w_dim] or [N, 1, w_dim] (broadcast).
      blocks: tuple[int, int],  # Blocks [start, stop) to run; b4 is block 0.
      block_input: jax.Array | None = None,  # Features entering block start (None for start 0).
      skip_image: jax.Array | None = None,  # None: the image accumulation starts at block start (IF-GMI).
      noise_mode: str = 'const',
  ) -> tuple[jax.Array, jax.Array]:
    """(features leaving block stop - 1, image accumulated over the blocks run): IF-GMI's split synthesis."""
    if ws.ndim == 3 and ws.shape[1] == 1:
      ws = jnp.broadcast_to(ws, (ws.shape[0], self.config.num_ws, ws.shape[2]))
    return self.synthesis(ws, noise_mode, blocks, block_input, skip_image)

  def __call__(
      self, z, c=None, truncation_psi=1.0, truncation_cutoff=None, noise_mode='const', update_w_avg=False
  ) -> jax.Array:
    return self.synthesize(self.map(z, c, truncation_psi, truncation_cutoff, update_w_avg), noise_mode)


# ----------------------------------------------------------------------------
# Discriminator ('resnet' architecture, unconditional).


class MinibatchStdLayer(nn.Module):
  group_size: int  # Samples per statistics group (clipped to the batch).
  num_channels: int = 1  # Feature groups, each giving one extra channel.

  def __call__(self, x: jax.Array) -> jax.Array:
    n, h, w, c = x.shape
    g = min(self.group_size, n)
    if n % g:
      raise ValueError(f'batch {n} is not divisible by the minibatch-std group size {g}')
    f = self.num_channels
    # Sample n belongs to group n % (N/G), as in the reference's reshape(G, -1, ...).
    y = x.reshape(g, n // g, h, w, f, c // f).astype(ops.accumulation_dtype(x.dtype))
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [N/G, H, W, F, c]
    y = jnp.mean(y, axis=(1, 2, 4))  # [N/G, F]
    y = jnp.tile(y[:, None, None, :], (g, h, w, 1))  # [N, H, W, F]
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class DiscriminatorBlock(nn.Module):
  tmp_channels: int  # Channels of the 3x3 convs.
  out_channels: int  # Output channels (at half resolution).
  is_first: bool  # Reads the image through fromrgb.
  conv_clamp: float | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array | None, img: jax.Array) -> jax.Array:
    conv = dict(conv_clamp=self.conv_clamp, dtype=self.dtype)
    if self.is_first:
      x = Conv2dLayer(self.tmp_channels, 1, activation='lrelu', name='fromrgb', **conv)(img)
    y = Conv2dLayer(self.out_channels, 1, use_bias=False, down=2, gain=math.sqrt(0.5), name='skip', **conv)(x)
    x = Conv2dLayer(self.tmp_channels, 3, activation='lrelu', name='conv0', **conv)(x)
    x = Conv2dLayer(self.out_channels, 3, activation='lrelu', down=2, gain=math.sqrt(0.5), name='conv1', **conv)(x)
    return y + x


class Discriminator(nn.Module):
  img_resolution: int  # Input resolution.
  img_channels: int  # Input color channels.
  channel_base: int = 32768
  channel_max: int = 512
  mbstd_group_size: int = 4  # Minibatch-std group size; 0 = off.
  mbstd_num_channels: int = 1
  conv_clamp: float | None = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, img: jax.Array) -> jax.Array:
    """[N, R, R, C] images -> [N] logits (real > fake)."""
    assert img.shape[1:] == (self.img_resolution, self.img_resolution, self.img_channels), img.shape
    x = None
    for res in reversed(block_resolutions(self.img_resolution)[1:]):
      x = DiscriminatorBlock(
          channels_at(res, self.channel_base, self.channel_max),
          channels_at(res // 2, self.channel_base, self.channel_max),
          is_first=res == self.img_resolution,
          conv_clamp=self.conv_clamp,
          dtype=self.dtype,
          name=f'b{res}',
      )(x, img)
    # Epilogue at 4x4.
    channels = channels_at(4, self.channel_base, self.channel_max)
    if self.mbstd_group_size:
      x = MinibatchStdLayer(self.mbstd_group_size, self.mbstd_num_channels, name='mbstd')(x)
    x = Conv2dLayer(channels, 3, activation='lrelu', conv_clamp=self.conv_clamp, dtype=self.dtype, name='b4_conv')(x)
    # NCHW flatten order, so weights keep the reference's layout.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1).astype(ops.accumulation_dtype(self.dtype))
    x = FullyConnectedLayer(channels, activation='lrelu', name='b4_fc')(x)
    return FullyConnectedLayer(1, name='b4_out')(x)[:, 0]
