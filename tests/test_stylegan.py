"""StyleGAN2 in JAX: ops against numpy/scipy, modulated conv against explicit per-sample convs,
generator semantics (noise, truncation, ws indexing), gradients w.r.t. ws by finite differences."""

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.signal

from mi_jax.stylegan import networks, ops

FIR = ops.setup_filter([1, 3, 3, 1])


# ------------------------------------------------------------------ independent references (numpy/scipy)


def ref_upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), flip_filter=False, gain=1.0):
  """The documented semantics, literally: zero-insert after each pixel, pad/crop, convolve, keep every down-th."""
  x0, x1, y0, y1 = padding
  n, h, w, c = x.shape
  up_x = np.zeros((n, h * up, w * up, c), x.dtype)
  up_x[:, ::up, ::up] = x
  up_x = np.pad(up_x, ((0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0)), (0, 0)))
  up_x = up_x[:, max(-y0, 0) : up_x.shape[1] - max(-y1, 0), max(-x0, 0) : up_x.shape[2] - max(-x1, 0)]
  op = scipy.signal.correlate2d if flip_filter else scipy.signal.convolve2d
  out = np.stack([np.stack([op(up_x[i, :, :, j], f * gain, mode='valid') for j in range(c)], -1) for i in range(n)])
  return out[:, ::down, ::down]


def ref_resample_1d(x, taps, axis, up, down, offset):
  """Separable resampling with scipy.signal.upfirdn along one axis (full output, then a window)."""
  full = np.apply_along_axis(lambda v: scipy.signal.upfirdn(taps, v, up=up), axis, x)
  length = x.shape[axis] * up // down
  return np.take(full, offset + down * np.arange(length), axis=axis)


def ref_modulated_conv(x, weight, styles, demodulate, up):
  """Per-sample kernels weight * styles (* dcoefs), convolved one sample at a time."""
  n, h, w, _ = x.shape
  kh = weight.shape[0]
  outs = []
  for i in range(n):
    wi = weight * styles[i][None, None, :, None]
    if demodulate:
      wi = wi / np.sqrt(np.sum(wi**2, axis=(0, 1, 2), keepdims=True) + 1e-8)
    channels = []
    for o in range(weight.shape[3]):
      if up == 1:  # correlation with padding k//2, as torch conv2d
        acc = sum(
            scipy.signal.correlate2d(np.pad(x[i, :, :, c], kh // 2), wi[:, :, c, o], mode='valid')
            for c in range(x.shape[3])
        )
      else:  # transposed conv stride 2 = full true convolution of the zero-upsampled input
        zeros = np.zeros((2 * h - 1, 2 * w - 1))
        acc = 0
        for c in range(x.shape[3]):
          zeros[::2, ::2] = x[i, :, :, c]
          acc = acc + scipy.signal.convolve2d(zeros, wi[:, :, c, o], mode='full')
      channels.append(acc)
    outs.append(np.stack(channels, -1))
  out = np.stack(outs)
  if up == 2:  # then the FIR with padding 1 and gain 4: 2H+1 -> 2H
    out = ref_upfirdn2d(out, FIR.astype(np.float64), padding=(1, 1, 1, 1), gain=4.0)
  return out


# ------------------------------------------------------------------ ops


def test_setup_filter_is_normalised_outer_product():
  np.testing.assert_allclose(FIR, np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0)
  assert ops.setup_filter([1, 2, 1], gain=4).sum() == pytest.approx(4)


@pytest.mark.parametrize(
    'up,down,padding,flip,separable',
    [
        (1, 1, (0, 0, 0, 0), False, True),
        (2, 1, (2, 1, 2, 1), False, True),
        (1, 2, (1, 1, 1, 1), False, False),
        (2, 2, (-1, 2, 0, -2), True, False),
        (3, 1, (-2, -1, 1, 0), False, True),
        (1, 3, (3, 0, 1, 2), True, True),
    ],
)
def test_upfirdn2d_matches_reference(up, down, padding, flip, separable):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 7, 9, 3))
  f = FIR.astype(np.float64) if separable else rng.standard_normal((4, 3))
  with jax.enable_x64(True):
    got = np.asarray(ops.upfirdn2d(jnp.asarray(x), f, up, down, padding, flip, gain=1.5))
  np.testing.assert_allclose(got, ref_upfirdn2d(x, f, up, down, padding, flip, gain=1.5), atol=1e-12)


def test_upsample2d_and_downsample2d_match_scipy_upfirdn():
  x = np.random.default_rng(1).standard_normal((2, 6, 8, 3))
  taps = np.array([1.0, 3.0, 3.0, 1.0]) / 8.0
  with jax.enable_x64(True):
    up = np.asarray(ops.upsample2d(jnp.asarray(x), FIR.astype(np.float64)))
    down = np.asarray(ops.downsample2d(jnp.asarray(x), FIR.astype(np.float64)))
  # Upsampling: taps * up per axis (gain up^2 in all); output pixel i is full-convolution sample i + 1.
  ref_up = ref_resample_1d(ref_resample_1d(x, 2 * taps, 1, 2, 1, 1), 2 * taps, 2, 2, 1, 1)
  # Downsampling: output pixel i is full-convolution sample 2i + 2.
  ref_down = ref_resample_1d(ref_resample_1d(x, taps, 1, 1, 2, 2), taps, 2, 1, 2, 2)
  assert up.shape == (2, 12, 16, 3) and down.shape == (2, 3, 4, 3)
  np.testing.assert_allclose(up, ref_up, atol=1e-12)
  np.testing.assert_allclose(down, ref_down, atol=1e-12)
  np.testing.assert_allclose(up.mean(), x.mean(), rtol=0.2)  # the gain keeps the image's level


def test_bias_act_order_gain_and_clamp():
  x = np.linspace(-3, 3, 24).reshape(2, 3, 4)
  b = np.array([0.5, -1.0, 0.25, 0.0])
  y = x + b
  lrelu = np.where(y >= 0, y, 0.2 * y) * np.sqrt(2)
  with jax.enable_x64(True):
    np.testing.assert_allclose(ops.bias_act(jnp.asarray(x), jnp.asarray(b), 'lrelu'), lrelu, rtol=1e-12)
    np.testing.assert_allclose(
        ops.bias_act(jnp.asarray(x), jnp.asarray(b), 'lrelu', clamp=1.5), np.clip(lrelu, -1.5, 1.5), rtol=1e-12
    )
    np.testing.assert_allclose(ops.bias_act(jnp.asarray(x), jnp.asarray(b), 'linear', gain=0.5), y * 0.5, rtol=1e-12)
  with pytest.raises(ValueError, match='unknown activation'):
    ops.bias_act(jnp.asarray(x), act='gelu')


@pytest.mark.parametrize('up,demodulate', [(1, True), (1, False), (2, True)])
def test_modulated_conv_matches_per_sample_convolution(up, demodulate):
  rng = np.random.default_rng(2)
  x = rng.standard_normal((2, 5, 6, 3))
  weight = rng.standard_normal((3, 3, 3, 4))
  styles = rng.standard_normal((2, 3)) + 1.0
  with jax.enable_x64(True):
    got = np.asarray(
        ops.modulated_conv2d(
            jnp.asarray(x),
            jnp.asarray(weight),
            jnp.asarray(styles),
            up=up,
            padding=1,
            resample_filter=FIR.astype(np.float64),
            demodulate=demodulate,
        )
    )
  ref = ref_modulated_conv(x, weight, styles, demodulate, up)
  assert got.shape == ref.shape == (2, 5 * up, 6 * up, 4)
  np.testing.assert_allclose(got, ref, atol=1e-10)


# ------------------------------------------------------------------ generator

TINY = networks.GeneratorConfig(
    z_dim=8, w_dim=8, img_resolution=16, img_channels=3, mapping_layers=2, channel_base=64, channel_max=8
)


@pytest.fixture(scope='module')
def tiny_generator():
  G = networks.Generator(TINY)
  variables = jax.jit(G.init)(jax.random.key(0), jnp.zeros((1, TINY.z_dim)))
  # Non-zero noise strengths, biases and w_avg so every path shows up in the output.
  flat = flax.traverse_util.flatten_dict(variables)
  rng = np.random.default_rng(3)
  for path, value in flat.items():
    if path[-1] in ('noise_strength', 'bias', 'w_avg'):
      flat[path] = value + jnp.asarray(rng.standard_normal(value.shape) * 0.3, value.dtype)
  return G, flax.traverse_util.unflatten_dict(flat)


def test_variable_names_follow_the_reference_state_dict(tiny_generator):
  _, variables = tiny_generator
  flat = {'/'.join(k): v.shape for k, v in flax.traverse_util.flatten_dict(variables).items()}
  assert flat['params/mapping/fc0/kernel'] == (8, 8)
  assert flat['params/synthesis/b4/const'] == (4, 4, 8)
  assert flat['params/synthesis/b16/conv0/kernel'] == (3, 3, 8, 4)  # 64 // 16 = 4 channels at 16x16
  assert flat['params/synthesis/b16/conv0/affine/kernel'] == (8, 8)
  assert flat['params/synthesis/b16/torgb/kernel'] == (1, 1, 4, 3)
  assert flat['params/synthesis/b8/conv1/noise_strength'] == ()
  assert flat['buffers/synthesis/b8/conv0/noise_const'] == (8, 8)
  assert flat['buffers/mapping/w_avg'] == (8,)
  assert 'params/synthesis/b4/conv0/kernel' not in flat  # b4 has only conv1
  # 2 mapping FCs x 2 + const + b4 (conv1 5 + torgb 4) + 2 blocks x (2 convs x 5 + torgb 4)
  assert sum(k.startswith('params/') for k in flat) == 4 + 1 + 9 + 2 * 14
  assert sum(k.endswith('noise_const') for k in flat) == 2 * 3 - 1


def test_ws_indexing_torgb_shares_the_next_conv0_w(tiny_generator):
  G, variables = tiny_generator
  ws = jnp.asarray(np.random.default_rng(4).standard_normal((1, TINY.num_ws, TINY.w_dim)), jnp.float32)
  received = {}

  def record(next_fun, args, kwargs, context):  # which row of ws did each layer get?
    if isinstance(context.module, (networks.SynthesisLayer, networks.ToRGBLayer)) and context.method_name == '__call__':
      w = np.asarray(args[1])
      received['.'.join(context.module.path[1:])] = [i for i in range(TINY.num_ws) if np.array_equal(w, ws[:, i])]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    G.apply(variables, ws, method=G.synthesize)
  assert received == {
      'b4.conv1': [0],
      'b4.torgb': [1],
      'b8.conv0': [1],
      'b8.conv1': [2],
      'b8.torgb': [3],
      'b16.conv0': [3],
      'b16.conv1': [4],
      'b16.torgb': [5],
  }


@pytest.mark.slow
def test_noise_modes(tiny_generator):
  G, variables = tiny_generator
  ws = jnp.ones((2, TINY.num_ws, TINY.w_dim))
  const1 = G.apply(variables, ws, 'const', method=G.synthesize)
  const2 = G.apply(variables, ws, 'const', method=G.synthesize)
  none = G.apply(variables, ws, 'none', method=G.synthesize)
  rand1 = G.apply(variables, ws, 'random', method=G.synthesize, rngs={'noise': jax.random.key(1)})
  rand2 = G.apply(variables, ws, 'random', method=G.synthesize, rngs={'noise': jax.random.key(2)})
  np.testing.assert_array_equal(const1, const2)
  np.testing.assert_allclose(const1[0], const1[1], atol=1e-6)  # const noise is the same for every sample
  assert float(jnp.abs(const1 - none).max()) > 1e-3
  assert float(jnp.abs(rand1 - rand2).max()) > 1e-3
  assert float(jnp.abs(rand1[0] - rand1[1]).max()) > 1e-3  # random noise differs per sample
  # With every noise strength zero, all three modes agree.
  zero = jax.tree_util.tree_map_with_path(
      lambda p, v: jnp.zeros_like(v) if p[-1].key == 'noise_strength' else v, variables
  )
  np.testing.assert_allclose(
      G.apply(zero, ws, 'const', method=G.synthesize), G.apply(zero, ws, 'none', method=G.synthesize), atol=1e-6
  )
  with pytest.raises(ValueError, match='noise_mode'):
    G.apply(variables, ws, 'fixed', method=G.synthesize)


def test_truncation_psi_and_cutoff_also_when_traced(tiny_generator):
  G, variables = tiny_generator
  z = jnp.asarray(np.random.default_rng(5).standard_normal((3, TINY.z_dim)), jnp.float32)
  w_avg = variables['buffers']['mapping']['w_avg']
  ws = G.apply(variables, z, method=G.map)
  assert ws.shape == (3, TINY.num_ws, TINY.w_dim)
  np.testing.assert_array_equal(ws[:, 0], ws[:, -1])  # one w broadcast to every layer
  zero_psi = G.apply(variables, z, None, 0.0, 2, method=G.map)
  np.testing.assert_allclose(zero_psi[:, :2], jnp.broadcast_to(w_avg, (3, 2, TINY.w_dim)), atol=1e-6)
  np.testing.assert_array_equal(zero_psi[:, 2:], ws[:, 2:])
  half = G.apply(variables, z, None, 0.5, None, method=G.map)
  np.testing.assert_allclose(half, w_avg + 0.5 * (ws - w_avg), atol=1e-6)
  traced = jax.jit(lambda psi, cutoff: G.apply(variables, z, None, psi, cutoff, method=G.map))
  np.testing.assert_allclose(traced(0.0, 2), zero_psi, atol=1e-6)
  np.testing.assert_allclose(traced(0.5, TINY.num_ws), half, atol=1e-6)


def test_w_avg_tracks_the_batch_mean_only_when_asked(tiny_generator):
  G, variables = tiny_generator
  z = jnp.asarray(np.random.default_rng(6).standard_normal((4, TINY.z_dim)), jnp.float32)
  ws, updates = G.apply(variables, z, update_w_avg=True, method=G.map, mutable=['buffers'])
  old = variables['buffers']['mapping']['w_avg']
  mean = ws[:, 0].mean(0)
  np.testing.assert_allclose(updates['buffers']['mapping']['w_avg'], mean + 0.995 * (old - mean), atol=1e-6)
  _, unchanged = G.apply(variables, z, method=G.map, mutable=['buffers'])
  np.testing.assert_array_equal(unchanged['buffers']['mapping']['w_avg'], old)


def test_single_w_is_broadcast_to_every_layer(tiny_generator):
  G, variables = tiny_generator
  w = jnp.asarray(np.random.default_rng(7).standard_normal((2, 1, TINY.w_dim)), jnp.float32)
  np.testing.assert_allclose(
      G.apply(variables, w, method=G.synthesize),
      G.apply(variables, jnp.repeat(w, TINY.num_ws, axis=1), method=G.synthesize),
      atol=1e-6,
  )
  with pytest.raises(ValueError, match='ws has shape'):
    G.apply(variables, jnp.zeros((2, 3, TINY.w_dim)), method=G.synthesize)


@pytest.mark.slow
@pytest.mark.parametrize('layers', ['single', 'per_layer'])
def test_grad_wrt_ws_matches_finite_differences(tiny_generator, layers):
  G, variables = tiny_generator
  num = 1 if layers == 'single' else TINY.num_ws
  with jax.enable_x64(True):
    G64 = networks.Generator(TINY, dtype=jnp.float64)
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
    target = jnp.asarray(np.random.default_rng(8).standard_normal((2, 16, 16, 3)))

    traces = []

    def loss(ws):  # any scalar of the image
      img = G64.apply(v64, ws, method=G64.synthesize)
      return jnp.sum(jnp.tanh(img) * target)

    def traced_grad(ws):
      traces.append(ws.shape)  # runs once per trace, not per call
      return jax.grad(loss)(ws)

    grad_fn = jax.jit(traced_grad)
    ws = jnp.asarray(np.random.default_rng(9).standard_normal((2, num, TINY.w_dim)))
    grad = np.asarray(grad_fn(ws))
    rng = np.random.default_rng(10)
    eps = 1e-6
    for _ in range(3):
      direction = rng.standard_normal(ws.shape)
      fd = (loss(ws + eps * direction) - loss(ws - eps * direction)) / (2 * eps)
      np.testing.assert_allclose(np.sum(grad * direction), fd, rtol=1e-6)
    grad_fn(ws + 1.0)
    assert len(traces) == 1  # new values, same shape: no recompilation


def test_bfloat16_path_stays_close_to_float32(tiny_generator):
  G, variables = tiny_generator
  ws = jnp.asarray(np.random.default_rng(11).standard_normal((2, TINY.num_ws, TINY.w_dim)), jnp.float32)
  fp32 = G.apply(variables, ws, method=G.synthesize)
  bf16 = networks.Generator(TINY, dtype=jnp.bfloat16).apply(variables, ws, method='synthesize')
  assert bf16.dtype == jnp.float32  # the image accumulates in float32
  assert float(jnp.abs(bf16 - fp32).max()) < 0.05 * float(jnp.abs(fp32).max())
