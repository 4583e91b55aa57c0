"""ε_θ(z_λ, λ, c): the ADM UNet (Dhariwal & Nichol) that Ho & Salimans reused.

The embedding is MLP(sinusoidal(t(λ))) + a class embedding of num_classes + 1 rows whose
last row (label `num_classes`) is the learned null label ∅, so that one network is both
the conditional and the unconditional model. Residual blocks take it through AdaGN.

Mixed precision: the torso (input conv, residual and attention blocks) computes in
`dtype`; the λ/class embedding and the output head compute in float32, as ADM keeps them
in float32 under fp16. Parameters and the output are float32. With `remat` every residual
and attention block recomputes its activations in the backward pass (same parameters).

Unlike ADM there is no learned-variance head: the output has z's channels, not twice
as many (Ho & Salimans interpolate the variance with the constant v instead).
"""
from __future__ import annotations

from typing import Sequence

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from cfg_jax.models import layers

Array = jax.Array


class ADMBase(nn.Module):
  """Hyperparameters and the downsampling half shared by the ADM UNet and its classifier.

  Attributes:
    num_classes: classes of the data (the UNet adds a row for ∅; the classifier's logits).
    ch: base channels; level i has ch·ch_mult[i], the embedding 4·ch.
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    ch_mult: channel multiplier per level; each level but the last halves the resolution.
    attn_resolutions: resolutions (feature-map height) with self-attention after each block.
    num_heads: attention heads, used when num_head_channels is -1.
    num_head_channels: channels per head (ADM-64: 64), or -1 to use num_heads.
    dropout: in every residual block, active only when train=True.
    resblock_updown: BigGAN-style residual blocks to resample (else strided / nearest conv).
    skip_rescale: divide every residual sum by sqrt(2) (ADM does not).
    dtype: compute dtype of the torso.
    remat: recompute each residual and attention block in the backward pass (`nn.remat`):
      less activation memory for about one more forward pass of compute.
    logsnr_emb_ch: width of λ's sinusoidal embedding (logsnr_emb_ch / 2 frequencies);
      0 ties it to ch, as ADM does.
    label_emb_std: std of the class table's initial entries (UNet only).
  """
  num_classes: int
  ch: int = 128
  num_res_blocks: int = 2
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  attn_resolutions: Sequence[int] = (16,)
  num_heads: int = 4
  num_head_channels: int = -1
  dropout: float = 0.
  resblock_updown: bool = True
  skip_rescale: bool = False
  dtype: layers.Dtype = jnp.float32
  remat: bool = False
  logsnr_emb_ch: int = 0
  label_emb_std: float = 1.

  @property
  def emb_dim(self) -> int:
    return 4 * self.ch

  @property
  def sinusoid_dim(self) -> int:
    return self.logsnr_emb_ch or self.ch

  def _check_inputs(self, z: Array, logsnr: Array) -> None:
    chex.assert_rank(z, 4)
    chex.assert_shape(logsnr, (z.shape[0],))
    factor = 2 ** (len(self.ch_mult) - 1)
    if z.shape[1] % factor or z.shape[2] % factor:
      raise ValueError(f"image size {z.shape[1:3]} must be divisible by {factor} for "
                       f"ch_mult={tuple(self.ch_mult)}.")

  def _res_block(self, out_ch: int, name: str, resample: str | None = None) -> nn.Module:
    """A ResBlock, called as block(h, emb, train) (train positional: static under remat)."""
    block = layers.maybe_remat(layers.ResBlock, self.remat, static_argnums=(3,))
    return block(out_ch, dropout=self.dropout, resample=resample,
                 skip_rescale=self.skip_rescale, dtype=self.dtype, name=name)

  def _attention(self, name: str) -> nn.Module:
    block = layers.maybe_remat(layers.AttentionBlock, self.remat)
    return block(num_heads=self.num_heads, num_head_channels=self.num_head_channels,
                 skip_rescale=self.skip_rescale, dtype=self.dtype, name=name)

  def _maybe_attention(self, h: Array, name: str) -> Array:
    return self._attention(name)(h) if h.shape[1] in self.attn_resolutions else h

  def _encode(self, z: Array, emb: Array, *, train: bool) -> tuple[Array, list[Array]]:
    """Input conv, the levels down and the middle block: (h, the skip activations)."""
    h = layers.conv3x3(self.ch * self.ch_mult[0], dtype=self.dtype, name="conv_in")(
        z.astype(self.dtype))
    hs = [h]
    for level, mult in enumerate(self.ch_mult):
      for i in range(self.num_res_blocks):
        h = self._res_block(mult * self.ch, f"down_{level}_res_{i}")(h, emb, train)
        h = self._maybe_attention(h, f"down_{level}_attn_{i}")
        hs.append(h)
      if level != len(self.ch_mult) - 1:
        name = f"down_{level}_downsample"
        if self.resblock_updown:
          h = self._res_block(h.shape[-1], name, "down")(h, emb, train)
        else:
          h = layers.conv3x3(h.shape[-1], strides=2, dtype=self.dtype, name=name)(h)
        hs.append(h)
    h = self._res_block(h.shape[-1], "mid_res_0")(h, emb, train)
    h = self._attention("mid_attn")(h)
    h = self._res_block(h.shape[-1], "mid_res_1")(h, emb, train)
    return h, hs

  def _out_norm(self, h: Array) -> Array:
    """The head's float32 GroupNorm and SiLU."""
    return nn.silu(layers.group_norm(h.astype(jnp.float32), dtype=jnp.float32, name="out_norm"))


class UNet(ADMBase):
  """ε_θ(z_λ, λ, c) of Ho & Salimans: the class-conditional ADM UNet, float32 ε in NHWC.

  Attributes (besides `ADMBase`'s):
    w_emb_ch: width of the guidance weight's sinusoidal embedding (`layers.WEmbedding`), for
      a guided-distillation student x̂_η(z_λ, c, w); 0 = no w input.
  """
  w_emb_ch: int = 0

  @nn.compact
  def __call__(self, z: Array, logsnr: Array, labels: Array, w: Array | None = None, *,
               train: bool) -> Array:
    """ε for z [B, H, W, C], logsnr float [B], labels int [B] in [0, num_classes] and, when
    w_emb_ch > 0 (only then), w float [B].

    Label `num_classes` is ∅. Dropout draws from the 'dropout' rng when train=True.
    """
    self._check_inputs(z, logsnr)
    chex.assert_shape(labels, (z.shape[0],))
    chex.assert_type(labels, int)
    emb = layers.embed_condition(logsnr, labels, ch=self.sinusoid_dim, emb_dim=self.emb_dim,
                                 num_classes=self.num_classes, label_emb_std=self.label_emb_std,
                                 w=w, w_emb_ch=self.w_emb_ch)
    h, hs = self._encode(z, emb, train=train)
    for level, mult in reversed(list(enumerate(self.ch_mult))):
      for i in range(self.num_res_blocks + 1):
        h = jnp.concatenate([h, hs.pop()], axis=-1)
        h = self._res_block(mult * self.ch, f"up_{level}_res_{i}")(h, emb, train)
        h = self._maybe_attention(h, f"up_{level}_attn_{i}")
      if level:
        name = f"up_{level}_upsample"
        if self.resblock_updown:
          h = self._res_block(h.shape[-1], name, "up")(h, emb, train)
        else:
          h = layers.conv3x3(h.shape[-1], dtype=self.dtype, name=name)(layers.upsample(h))
    return layers.conv3x3(z.shape[-1], dtype=jnp.float32, zero_init=True, name="out_conv")(
        self._out_norm(h))
