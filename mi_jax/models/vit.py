"""Vision Transformer (torchvision layout, ViT-B/16) with skip control per encoder block.

The model is torchvision's `VisionTransformer`: a patchifying conv (`conv_proj`), a class token, learnt
positional embeddings, pre-norm encoder blocks (LayerNorm -> multi-head self-attention -> + residual,
LayerNorm -> MLP with exact GELU -> + residual), a final LayerNorm and a linear head on the class token.

Skip control follows the official RoLSS code (Pillowkoh/RoLSS, models/torchvision/models/
vision_transformer.py, `EncoderBlock.forward`): every encoder block is a stage with its own factor k
(config.model.skip has one entry per block, 12 for ViT-B/16), and the factor multiplies the *identity*
of a residual, never the branch:

    x   = attention(ln_1(input)) + k * input      # the attention residual
    out = mlp(ln_2(x)) + k * x                    # the MLP residual

config.model.residual_branch (the official `mode`) picks which residuals take k: 'attention' only the
first, 'mlp' only the second (the other keeps a plain `+ identity`), 'all' both. The released RoLSS
config (configs/training/targets/FaceScrub/vit/skip.yaml) is skip [0,1,...,1] with mode 'mlp': block 1's
MLP output without its identity. The official factor is a fixed float; here it may also be learnt
('learn', parameter `skip_scale_stage{i}`) as for the other targets.

Differences from torchvision, all without effect on the function of imported weights:
- The positional embedding's length is taken from the input at init, so any image size divisible by
  the patch size works; a weight file made for another size then fails to import, naming
  `pos_embedding`.
- The head is called `classifier` (torchvision: `heads.head`) so that the default config.model.init_reinit
  ('fc', 'classifier') re-initialises it for another class count; it is initialised as the fresh
  `nn.Linear` the official code puts there for FaceScrub's 530 classes (torchvision's own head starts at 0).
- Attention is written out with one input projection `in_proj` ([hidden, 3 * hidden], q|k|v), as
  torch's `nn.MultiheadAttention` stores it.

Small models (CPU demos and tests): config.model.width > 0 sets the hidden size, with
max(1, width // 64) heads and an MLP of 4 * width; config.model.stem = 'small' uses 4x4 patches
instead of 16x16, meant for inputs of at most 64 px (32 px -> 64 patches + the class token).
"""

import math
from typing import Any, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mi_jax.models import ops
from mi_jax.models import registry
from mi_jax.models import skip as skip_lib

RESIDUAL_BRANCHES = ('all', 'attention', 'mlp')  # config.model.residual_branch: the official code's `mode`
SMALL_PATCH_SIZE = 4  # config.model.stem = 'small'
LN_EPSILON = 1e-6  # torchvision's partial(nn.LayerNorm, eps=1e-6)

xavier_uniform = nn.initializers.xavier_uniform()
# torch nn.Linear's default: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)).
torch_linear_kernel = nn.initializers.variance_scaling(1.0 / 3.0, 'fan_in', 'uniform')


def torch_linear_bias(fan_in: int):
  """torch nn.Linear's default bias: U(+-1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class ViTArchitecture(NamedTuple):
  patch_size: int
  num_layers: int  # Encoder blocks = skip settings.
  num_heads: int
  hidden_dim: int
  mlp_dim: int


VIT_CONFIGS = {'vit_b_16': ViTArchitecture(patch_size=16, num_layers=12, num_heads=12, hidden_dim=768, mlp_dim=3072)}


class SelfAttention(nn.Module):
  """torch nn.MultiheadAttention(hidden, heads, batch_first=True) on (x, x, x), without returned weights."""

  num_heads: int
  attention_dropout: float = 0.0  # On the attention weights, as torch's `dropout` argument.
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    batch, length, hidden = x.shape
    head_dim = hidden // self.num_heads
    # torch: in_proj_weight xavier_uniform_ over the whole [3 * hidden, hidden] matrix, biases 0.
    qkv = nn.Dense(3 * hidden, kernel_init=xavier_uniform, dtype=self.dtype, name='in_proj')(x)
    q, k, v = (t.reshape(batch, length, self.num_heads, head_dim) for t in jnp.split(qkv, 3, axis=-1))
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k) / math.sqrt(head_dim)
    # Softmax in float32 whatever the compute dtype: bfloat16 logits lose the small attention weights.
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.attention_dropout, deterministic=not train)(weights)
    out = jnp.einsum('bhqk,bkhd->bqhd', weights, v).reshape(batch, length, hidden)
    return nn.Dense(hidden, kernel_init=torch_linear_kernel, dtype=self.dtype, name='out_proj')(out)


class EncoderBlock(nn.Module):
  """torchvision's EncoderBlock; `skip_scale` multiplies the identity of the residuals residual_branch names."""

  num_heads: int
  mlp_dim: int
  residual_branch: str = 'all'  # Which residuals take the factor: 'all', 'attention' or 'mlp'.
  dropout: float = 0.0  # After the attention and inside the MLP (torchvision's `dropout`).
  attention_dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs, skip_scale, train: bool):
    hidden = inputs.shape[-1]
    attention_scale = 1.0 if self.residual_branch == 'mlp' else skip_scale
    mlp_scale = 1.0 if self.residual_branch == 'attention' else skip_scale
    drop = lambda y: nn.Dropout(self.dropout, deterministic=not train)(y)
    y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name='ln_1')(inputs)
    y = SelfAttention(self.num_heads, self.attention_dropout, self.dtype, name='self_attention')(y, train)
    x = skip_lib.add_skip(drop(y), lambda: inputs, attention_scale)

    # torchvision's MLPBlock: xavier_uniform_ weights, N(0, 1e-6) biases.
    mlp_dense = lambda features, name: nn.Dense(
        features, kernel_init=xavier_uniform, bias_init=nn.initializers.normal(1e-6), dtype=self.dtype, name=name
    )
    y = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name='ln_2')(x)
    y = jax.nn.gelu(mlp_dense(self.mlp_dim, 'mlp_in')(y), approximate=False)
    y = drop(mlp_dense(hidden, 'mlp_out')(drop(y)))
    return skip_lib.add_skip(y, lambda: x, mlp_scale)


class VisionTransformer(nn.Module):
  """torchvision-layout ViT whose encoder blocks take a skip setting each (see the module docstring)."""

  num_classes: int
  skip: Sequence[Any] = (1.0,) * 12  # One skip setting per encoder block.
  patch_size: int = 16
  num_layers: int = 12
  num_heads: int = 12
  hidden_dim: int = 768
  mlp_dim: int = 3072
  residual_branch: str = 'all'  # Which residuals the factor scales: 'all', 'attention' or 'mlp'.
  dropout: float = 0.0  # torchvision's default; after the positional embedding, the attention and in the MLP.
  attention_dropout: float = 0.0  # On the attention weights.
  dtype: Any = jnp.float32  # Computation dtype; params stay float32.

  @nn.compact
  def __call__(self, x, train: bool = False):
    skip_lib.check_count(self.skip, self.num_layers, 'encoder blocks')
    if self.residual_branch not in RESIDUAL_BRANCHES:
      raise ValueError(f'residual_branch {self.residual_branch!r}: expected one of {", ".join(RESIDUAL_BRANCHES)}')
    if self.hidden_dim % self.num_heads:
      raise ValueError(f'hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}')
    batch, height, width, _ = x.shape
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(f'input of {height}x{width} px: not divisible by the patch size {self.patch_size}')
    x = jnp.asarray(x, self.dtype)
    # torchvision: trunc_normal_(std=sqrt(1 / fan_in)) cut at +-2 absolute, i.e. ~50 std: a plain normal.
    x = ops.Conv(
        self.hidden_dim,
        (self.patch_size, self.patch_size),
        strides=(self.patch_size, self.patch_size),
        padding='VALID',
        kernel_init=nn.initializers.variance_scaling(1.0, 'fan_in', 'normal'),
        dtype=self.dtype,
        name='conv_proj',
    )(x)
    x = x.reshape(batch, -1, self.hidden_dim)  # patches in row-major order, as torchvision's reshape
    class_token = self.param('class_token', nn.initializers.zeros, (1, 1, self.hidden_dim), jnp.float32)
    x = jnp.concatenate([jnp.broadcast_to(class_token.astype(self.dtype), (batch, 1, self.hidden_dim)), x], axis=1)
    # Its length follows the input at init (module docstring); torchvision's BERT-style N(0, 0.02).
    pos_embedding = self.param(
        'pos_embedding', nn.initializers.normal(0.02), (1, x.shape[1], self.hidden_dim), jnp.float32
    )
    x = nn.Dropout(self.dropout, deterministic=not train)(x + pos_embedding.astype(self.dtype))
    for i in range(self.num_layers):
      skip_scale = skip_lib.stage_skip_scale(self, i + 1, self.skip[i], self.dtype)
      # Named perturbation point: the gradient w.r.t. it is dL/dz_i at the block input.
      x = self.perturb(f'stage{i + 1}_input', x)
      x = EncoderBlock(
          self.num_heads,
          self.mlp_dim,
          self.residual_branch,
          self.dropout,
          self.attention_dropout,
          self.dtype,
          name=f'encoder_layer_{i}',
      )(x, skip_scale, train)
    x = nn.LayerNorm(epsilon=LN_EPSILON, dtype=self.dtype, name='encoder_ln')(x)
    return nn.Dense(
        self.num_classes,
        kernel_init=torch_linear_kernel,
        bias_init=torch_linear_bias(self.hidden_dim),
        dtype=self.dtype,
        name='classifier',
    )(x[:, 0])


def _build(model_config, architecture, dtype, deploy):
  del deploy
  branch = model_config.get('residual_branch', 'all')
  if branch not in RESIDUAL_BRANCHES:
    raise ValueError(f'config.model.residual_branch={branch!r}: expected one of {", ".join(RESIDUAL_BRANCHES)}')
  if model_config.stem not in ('imagenet', 'small'):
    raise ValueError(
        f"config.model.stem={model_config.stem!r}: expected 'imagenet' ({architecture.patch_size}x"
        f"{architecture.patch_size} patches) or 'small' ({SMALL_PATCH_SIZE}x{SMALL_PATCH_SIZE}, <= 64 px inputs)"
    )
  hidden, heads, mlp = architecture.hidden_dim, architecture.num_heads, architecture.mlp_dim
  if model_config.width:  # demos: hidden size `width`, 64-wide heads (at least one), MLP 4x
    hidden = model_config.width
    heads = max(1, hidden // 64)
    mlp = 4 * hidden
    if hidden < 1 or hidden % heads:
      raise ValueError(
          f'config.model.width={hidden}: the hidden size must be positive and divisible by its {heads} heads '
          '(width // 64, at least 1)'
      )
  return VisionTransformer(
      num_classes=model_config.num_classes,
      skip=tuple(model_config.skip),
      patch_size=architecture.patch_size if model_config.stem == 'imagenet' else SMALL_PATCH_SIZE,
      num_layers=architecture.num_layers,
      num_heads=heads,
      hidden_dim=hidden,
      mlp_dim=mlp,
      residual_branch=branch,
      dtype=dtype,
  )


FAMILY = registry.Family(
    name='vit',
    architectures=VIT_CONFIGS,
    build=_build,
    num_stages=lambda architecture: architecture.num_layers,
    torch_layout='vit',
    options=(('residual_branch', 'all'),),  # shared with MaxViT
)
