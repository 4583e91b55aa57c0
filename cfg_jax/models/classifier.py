"""p_φ(c | z_λ, λ): ADM's noise-conditional classifier for classifier guidance.

The UNet's downsampling half and middle block (conditioned on λ only, no class
embedding), then a float32 GroupNorm, SiLU and attention pooling of the last feature map
(8×8 for the ImageNet presets) into logits.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from cfg_jax.models import layers
from cfg_jax.models import unet

Array = jax.Array


class Classifier(unet.ADMBase):
  """Logits of p_φ(c | z_λ, λ); the hyperparameters are the UNet's (see `unet.ADMBase`)."""

  @nn.compact
  def __call__(self, z: Array, logsnr: Array, *, train: bool) -> Array:
    """float32 logits [B, num_classes] for z [B, H, W, C] and logsnr float [B]."""
    self._check_inputs(z, logsnr)
    emb = layers.LogSNREmbedding(self.sinusoid_dim, self.emb_dim, name="logsnr_emb")(logsnr)
    h, _ = self._encode(z, emb, train=train)
    h = self._out_norm(h)
    heads = layers.num_heads_for(h.shape[-1], num_heads=self.num_heads,
                                 num_head_channels=self.num_head_channels)
    return layers.AttentionPool(self.num_classes, heads, dtype=jnp.float32,
                                name="attn_pool")(h)
