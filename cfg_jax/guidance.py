"""Guidance: the classifier-free mix of Ho & Salimans and the classifier gradient of ADM.

Classifier-free (Ho & Salimans, Algorithm 2): out = (1 + w) out(z, c) - w out(z, ∅), both
halves from one pass of the network on the doubled batch.

Classifier guidance (Dhariwal & Nichol): g = s ∇_z log p_φ(c | z_λ, λ).
The stochastic sampler shifts the reverse-step mean by (reverse variance) · g
(`condition_mean`); the deterministic one uses the score form ε̃ = ε - σ_λ g
(`condition_score`), since ε = -σ_λ ∇_z log p(z_λ).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from cfg_jax import diffusion

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array, Array], Array]
# classifier_fn(classifier_params, z, logsnr) -> logits [B, num_classes]
ClassifierFn = Callable[[Any, Array, Array], Array]


def classifier_free(apply_fn: ApplyFn, params: Any, z: Array, logsnr: Array, labels: Array,
                    w: Array, null_label: int) -> Array:
  """(1 + w) out(z, c) - w out(z, ∅), both halves from one pass on the doubled batch."""
  batch = z.shape[0]
  out = apply_fn(params, jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
                 jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
  cond, uncond = out[:batch], out[batch:]
  w = diffusion.expand_to(w, cond)
  return cond + w * (cond - uncond)


def classifier_grad(classifier_fn: ClassifierFn, classifier_params: Any, z: Array,
                    logsnr: Array, labels: Array, scale: Array) -> Array:
  """g = scale · ∇_z log p_φ(labels | z, λ), per example ([B] or scalar scale)."""
  def log_prob(z):
    logits = classifier_fn(classifier_params, z, logsnr).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    # Examples are independent, so the gradient of the sum is the per-example gradient.
    return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
  return diffusion.expand_to(scale, z) * jax.grad(log_prob)(z)
