"""Building blocks of the ADM UNet (Dhariwal & Nichol, openai/guided-diffusion), in NHWC.

λ enters every network the same way (`LogSNREmbedding`): the bounded time
t = `schedules.logsnr_to_time(λ)` = arctan(e^{-λ/2}) / (π/2) ∈ (0, 1), scaled by 1000 so
that its sinusoidal embedding spans the frequencies ADM's integer timesteps did, then a
two-layer SiLU MLP. t is uniform under the training p(λ) and stays finite for any λ.
A guided-distillation student (Meng et al.) also takes the guidance weight w
(`WEmbedding`), whose last layer starts at zero.

`dtype` is the compute dtype; parameters are float32 whatever it is. In bfloat16 the
convolutions, dense layers and attention matmuls take bfloat16 inputs, while GroupNorm
statistics, the attention logits and softmax, the embedding and the networks' heads are
float32.
"""
from __future__ import annotations

import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from cfg_jax import schedules

Array = jax.Array
Dtype = Any

TIME_SCALE = 1000.   # t ∈ (0, 1) → ADM's timestep range [0, 1000)
W_SCALE = 250.       # w ∈ [0, 4] → the same phases [0, 1000) as t ∈ [0, 1] in LogSNREmbedding
NUM_GROUPS = 32      # ADM's GroupNorm32
NORM_EPS = 1e-5      # PyTorch's GroupNorm default, as in ADM


def group_norm(x: Array, *, dtype: Dtype, name: str) -> Array:
  """GroupNorm of x [..., C] with ADM's 32 groups, or C // 4 when C < 128.

  At least 4 channels per group (as NCSN++) lets the small presets be narrow; every
  ADM preset is at least 128 channels wide, where this is ADM's GroupNorm32.
  """
  num_groups = min(NUM_GROUPS, max(x.shape[-1] // 4, 1))
  return GroupNorm(num_groups, dtype=dtype, name=name)(x)


class GroupNorm(nn.Module):
  """`nn.GroupNorm` (same parameters, float32 statistics, E[x²] - E[x]² variance) whose
  per-channel sums are matrix-vector products, which XLA:CPU runs faster than the plain
  reductions of `nn.GroupNorm`'s statistics (it lowers those to reduce-windows).
  """
  num_groups: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, c = x.shape[0], x.shape[-1]
    if c % self.num_groups:
      raise ValueError(f"{c} channels are not divisible by num_groups={self.num_groups}.")
    scale = self.param("scale", nn.initializers.ones, (c,))
    bias = self.param("bias", nn.initializers.zeros, (c,))
    xf = x.astype(jnp.float32).reshape(b, -1, c)
    ones = jnp.ones((xf.shape[1],), jnp.float32)
    sums = jnp.stack([jnp.einsum("bpc,p->bc", xf, ones),
                      jnp.einsum("bpc,p->bc", jnp.square(xf), ones)])  # [2, B, C]
    count = xf.shape[1] * (c // self.num_groups)
    mean, mean_sq = jnp.repeat(sums.reshape(2, b, self.num_groups, -1).sum(-1) / count,
                               c // self.num_groups, axis=-1)  # [B, C] each
    inv = jax.lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.) + NORM_EPS) * scale
    y = xf * inv[:, None] + (bias - mean * inv)[:, None]
    return y.reshape(x.shape).astype(self.dtype)


def maybe_remat(module_class: type[nn.Module], remat: bool, *,
                static_argnums: tuple[int, ...] = ()) -> type[nn.Module]:
  """module_class, or with `remat` its `nn.remat`: the same parameters and outputs, but
  its activations are recomputed in the backward pass instead of being kept from the
  forward, for less memory at the cost of a second forward.

  static_argnums count `self` as 0; such arguments (a `train` flag) must be passed
  positionally.
  """
  return nn.remat(module_class, static_argnums=static_argnums) if remat else module_class


def sinusoidal_embedding(t: Array, dim: int, *, max_period: float = 10_000.) -> Array:
  """ADM's timestep embedding [cos, sin](t·f), dim/2 geometric frequencies f; float32 [B, dim]."""
  if dim % 2:
    raise ValueError(f"dim must be even, got {dim}.")
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


class LogSNREmbedding(nn.Module):
  """λ [B] → MLP(sinusoidal(1000 t(λ))) [B, emb_dim], float32 (see the module docstring)."""
  ch: int
  emb_dim: int

  @nn.compact
  def __call__(self, logsnr: Array) -> Array:
    h = sinusoidal_embedding(TIME_SCALE * schedules.logsnr_to_time(logsnr), self.ch)
    h = nn.Dense(self.emb_dim, name="dense_0")(h)
    return nn.Dense(self.emb_dim, name="dense_1")(nn.silu(h))


class WEmbedding(nn.Module):
  """w [B] → MLP(sinusoidal(W_SCALE w)) [B, emb_dim], float32; zero at init for every w.

  The guidance weight as an input of a distillation student x̂_η(z_λ, c, w) (Meng et al.).
  W_SCALE = 250 lets w ∈ [0, 4] span the phases that t ∈ [0, 1] spans in `LogSNREmbedding`
  (TIME_SCALE = 1000). The last Dense, kernel and bias, starts at zero.
  """
  ch: int
  emb_dim: int

  @nn.compact
  def __call__(self, w: Array) -> Array:
    h = sinusoidal_embedding(W_SCALE * w, self.ch)
    h = nn.Dense(self.emb_dim, name="dense_0")(h)
    return nn.Dense(self.emb_dim, kernel_init=nn.initializers.zeros,
                    bias_init=nn.initializers.zeros, name="dense_1")(nn.silu(h))


def embed_condition(logsnr: Array, labels: Array, *, ch: int, emb_dim: int, num_classes: int,
                    label_emb_std: float = 1., w: Array | None = None,
                    w_emb_ch: int = 0) -> Array:
  """The ε-networks' embedding: LogSNREmbedding(λ) + a learned class embedding, float32.

  The class table has num_classes + 1 rows; the last, label `num_classes`, is ∅. Its
  entries start N(0, label_emb_std²); ADM's (PyTorch's nn.Embedding) start N(0, 1).
  With w_emb_ch > 0, `WEmbedding(w_emb_ch)` of the guidance weight w (float [B], required
  then, refused otherwise) is added. It starts at zero, so a w-network whose other
  parameters are copied from a network without w computes that network's output for every
  w: a distillation student starts from its teacher's weights.
  """
  if w_emb_ch and w is None:
    raise ValueError(f"This network takes the guidance weight w (w_emb_ch={w_emb_ch}); pass w, "
                     f"float [B].")
  if not w_emb_ch and w is not None:
    raise ValueError("This network has no w input (w_emb_ch=0), but w was given.")
  emb = LogSNREmbedding(ch, emb_dim, name="logsnr_emb")(logsnr)
  table = nn.Embed(num_classes + 1, emb_dim, embedding_init=nn.initializers.normal(label_emb_std),
                   name="label_emb")
  emb = emb + table(labels)
  if w_emb_ch:
    chex.assert_shape(w, logsnr.shape)
    chex.assert_type(w, float)
    emb = emb + WEmbedding(w_emb_ch, emb_dim, name="w_emb")(w)
  return emb


def scale_shift(h: Array, emb: Array, *, dtype: Dtype, name: str) -> Array:
  """AdaGN's modulation h·(1 + scale) + shift with (scale, shift) = Dense(SiLU(emb)).

  h is already normalized, [B, ..., C]; emb is [B, E].
  """
  out = nn.Dense(2 * h.shape[-1], dtype=dtype, name=name)(nn.silu(emb))
  scale, shift = jnp.split(out.reshape((out.shape[0],) + (1,) * (h.ndim - 2) + (-1,)), 2, -1)
  return h * (1. + scale) + shift


def residual(skip: Array, h: Array, skip_rescale: bool) -> Array:
  # 1/sqrt(2) keeps the variance of a sum of two unit-variance branches at one.
  return (skip + h) / math.sqrt(2.) if skip_rescale else skip + h


def conv3x3(features: int, *, dtype: Dtype, name: str, zero_init: bool = False,
            strides: int = 1) -> nn.Conv:
  # Symmetric padding of 1 as in ADM (SAME pads only after the input for stride 2).
  return nn.Conv(features, (3, 3), strides=strides, padding=1, dtype=dtype, name=name,
                 kernel_init=(nn.initializers.zeros if zero_init
                              else nn.linear.default_kernel_init))


def downsample(x: Array) -> Array:
  """2x2 average pooling of [B, H, W, C] (even H, W), as a reshape and a mean.

  Equal to `nn.avg_pool(x, (2, 2), strides=(2, 2))`, without its reduce-window, which
  XLA:CPU runs (forward and gradient) far slower than a plain reduction.
  """
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample(x: Array) -> Array:
  """Nearest-neighbour upsampling by 2 of [B, H, W, C], as a broadcast and a reshape."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None], (b, h, 2, w, 2, c)).reshape(b, 2 * h, 2 * w, c)


class ResBlock(nn.Module):
  """ADM's residual block with AdaGN, optionally BigGAN-style resampling.

  h = conv(SiLU(GN(x))); h = GN(h)·(1 + scale) + shift; out = skip(x) + conv(drop(SiLU(h)))
  with the last convolution zero-initialized. `train` (dropout on) may be positional, so
  that `maybe_remat(ResBlock, True, static_argnums=(3,))` can treat it as static.
  With `resample` "down" or "up", both branches are average-pooled or nearest-upsampled
  after the first GroupNorm and SiLU, so the block itself changes the resolution.
  """
  out_ch: int
  dropout: float = 0.
  resample: str | None = None  # None | "down" | "up"
  skip_rescale: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array, emb: Array, train: bool) -> Array:
    h = nn.silu(group_norm(x, dtype=self.dtype, name="norm_0"))
    if self.resample is not None:
      resample = {"down": downsample, "up": upsample}[self.resample]
      h, x = resample(h), resample(x)
    h = conv3x3(self.out_ch, dtype=self.dtype, name="conv_0")(h)
    h = scale_shift(group_norm(h, dtype=self.dtype, name="norm_1"), emb, dtype=self.dtype,
                    name="emb_proj")
    h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
    h = conv3x3(self.out_ch, dtype=self.dtype, name="conv_1", zero_init=True)(h)
    if x.shape[-1] != self.out_ch:
      x = nn.Conv(self.out_ch, (1, 1), dtype=self.dtype, name="skip")(x)
    return residual(x, h, self.skip_rescale)


def num_heads_for(channels: int, *, num_heads: int, num_head_channels: int) -> int:
  """Heads of an attention layer: channels // num_head_channels, or num_heads if that is -1."""
  if num_head_channels != -1:
    if channels % num_head_channels:
      raise ValueError(f"{channels} channels are not divisible by num_head_channels="
                       f"{num_head_channels}.")
    return channels // num_head_channels
  if channels % num_heads:
    raise ValueError(f"{channels} channels are not divisible by num_heads={num_heads}.")
  return num_heads


def multi_head_attention(qkv: Array, num_heads: int) -> Array:
  """Self-attention of [B, T, 3C] → [B, T, C], split into q, k, v before heads.

  That is ADM's "new attention order"; logits and softmax are float32 in any dtype.
  """
  b, t, _ = qkv.shape
  q, k, v = (a.reshape(b, t, num_heads, -1) for a in jnp.split(qkv, 3, axis=-1))
  return jax.nn.dot_product_attention(q, k, v).reshape(b, t, -1)


class AttentionBlock(nn.Module):
  """Multi-head self-attention over the H·W positions, with a zero-initialized output."""
  num_heads: int = 1
  num_head_channels: int = -1
  skip_rescale: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, height, width, c = x.shape
    heads = num_heads_for(c, num_heads=self.num_heads, num_head_channels=self.num_head_channels)
    h = group_norm(x, dtype=self.dtype, name="norm").reshape(b, height * width, c)
    h = multi_head_attention(nn.Dense(3 * c, dtype=self.dtype, name="qkv")(h), heads)
    h = nn.Dense(c, dtype=self.dtype, kernel_init=nn.initializers.zeros, name="proj_out")(h)
    return residual(x, h.reshape(x.shape), self.skip_rescale)


class AttentionPool(nn.Module):
  """CLIP-style attention pooling of ADM's classifier: [B, H, W, C] → [B, out_dim].

  The mean over positions is prepended as a token; its attention output, projected, is
  the result. Positions carry a learned embedding, so H·W is fixed at init.
  """
  out_dim: int
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, height, width, c = x.shape
    x = x.reshape(b, height * width, c)
    x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1)
    pos_emb = self.param("pos_emb", nn.initializers.normal(c ** -0.5), x.shape[1:])
    h = nn.Dense(3 * c, dtype=self.dtype, name="qkv")(x + pos_emb.astype(x.dtype))
    h = multi_head_attention(h, self.num_heads)
    return nn.Dense(self.out_dim, dtype=self.dtype, name="proj_out")(h[:, 0])
