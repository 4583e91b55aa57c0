"""ε_θ(z_λ, λ, c) for low-dimensional data (the 2-D toy): a residual MLP.

The same conditioning as the UNet (`layers.LogSNREmbedding` of λ plus a class embedding
with the null label ∅ as row `num_classes`, and with `w_emb_ch` the guidance weight w), fed
to each block by scale-shift after a LayerNorm. Each block's last layer and the output layer
are zero-initialized.
Parameters and output are float32; the blocks compute in `dtype` (LayerNorm statistics in
float32); with `remat` each block recomputes its activations in the backward pass.
"""
from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from cfg_jax.models import layers

Array = jax.Array


class MLPBlock(nn.Module):
  """h + Dense(drop(SiLU(LN(r)·(1 + scale) + shift))), r = Dense(SiLU(LN(h))), AdaGN-like.

  (scale, shift) come from the embedding; the last Dense starts at zero. `train` may be
  positional, to be static under `nn.remat`.
  """
  dropout: float = 0.
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, h: Array, emb: Array, train: bool) -> Array:
    width = h.shape[-1]
    r = nn.silu(nn.LayerNorm(dtype=self.dtype, name="norm_0")(h))
    r = nn.LayerNorm(dtype=self.dtype, name="norm_1")(
        nn.Dense(width, dtype=self.dtype, name="dense_0")(r))
    r = layers.scale_shift(r, emb, dtype=self.dtype, name="emb_proj")
    r = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(r))
    return h + nn.Dense(width, dtype=self.dtype, kernel_init=nn.initializers.zeros,
                        name="dense_1")(r)


class MLP(nn.Module):
  """ε for z [B, D]: `depth` residual blocks of width `hidden`.

  Attributes:
    num_classes: classes of the data; the embedding has a row more, for ∅.
    hidden: width of the blocks and of the embedding.
    depth: number of residual blocks.
    dropout: in every block, active only when train=True.
    dtype: compute dtype of the blocks.
    remat: recompute each block's activations in the backward pass (`nn.remat`).
    logsnr_emb_ch: width of λ's sinusoidal embedding; 0 ties it to hidden.
    label_emb_std: std of the class table's initial entries.
    w_emb_ch: width of the guidance weight's sinusoidal embedding (`layers.WEmbedding`), for
      a guided-distillation student x̂_η(z_λ, c, w); 0 = no w input.
  """
  num_classes: int
  hidden: int = 256
  depth: int = 4
  dropout: float = 0.
  dtype: layers.Dtype = jnp.float32
  remat: bool = False
  logsnr_emb_ch: int = 0
  label_emb_std: float = 1.
  w_emb_ch: int = 0

  @nn.compact
  def __call__(self, z: Array, logsnr: Array, labels: Array, w: Array | None = None, *,
               train: bool) -> Array:
    """ε for z [B, D], logsnr float [B], labels int [B] in [0, num_classes] (∅ = num_classes)
    and, when w_emb_ch > 0 (only then), w float [B]."""
    chex.assert_rank(z, 2)
    chex.assert_shape([logsnr, labels], (z.shape[0],))
    chex.assert_type(labels, int)
    emb = layers.embed_condition(logsnr, labels, ch=self.logsnr_emb_ch or self.hidden,
                                 emb_dim=self.hidden, num_classes=self.num_classes,
                                 label_emb_std=self.label_emb_std, w=w, w_emb_ch=self.w_emb_ch)
    h = nn.Dense(self.hidden, dtype=self.dtype, name="dense_in")(z.astype(self.dtype))
    block = layers.maybe_remat(MLPBlock, self.remat, static_argnums=(3,))
    for i in range(self.depth):
      h = block(self.dropout, dtype=self.dtype, name=f"block_{i}")(h, emb, train)
    h = nn.silu(nn.LayerNorm(name="out_norm")(h.astype(jnp.float32)))
    return nn.Dense(z.shape[-1], kernel_init=nn.initializers.zeros, name="dense_out")(h)
