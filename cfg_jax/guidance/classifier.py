"""Classifier guidance (Dhariwal & Nichol): g = s ∇_z log p_φ(c | z_λ, λ).

The stochastic sampler shifts the reverse-step mean by (reverse variance) · g
(condition_mean); the deterministic one uses the score form ε̃ = ε - σ_λ g
(condition_score), since ε = -σ_λ ∇_z log p(z_λ).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from cfg_jax import diffusion

Array = jax.Array
# classifier_fn(classifier_params, z, logsnr) -> logits [B, num_classes]
ClassifierFn = Callable[[Any, Array, Array], Array]


def classifier_grad(classifier_fn: ClassifierFn, classifier_params: Any, z: Array,
                    logsnr: Array, labels: Array, scale: Array) -> Array:
  """g = scale · ∇_z log p_φ(labels | z, λ), per example ([B] or scalar scale)."""
  def log_prob(z):
    logits = classifier_fn(classifier_params, z, logsnr).astype(jnp.float32)
    log_probs = jax.nn.log_softmax(logits)
    # Examples are independent, so the gradient of the sum is the per-example gradient.
    return jnp.sum(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
  return diffusion.expand_to(scale, z) * jax.grad(log_prob)(z)
