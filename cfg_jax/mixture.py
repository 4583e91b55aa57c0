"""Exact denoisers and classifiers of a Gaussian mixture, the ground truth for 2-D tests.

For data x | c ~ N(m_c, S_c) with prior π_c, the noisy z_λ | c ~ N(α m_c, C_c) with
C_c = α² S_c + σ² I, so E[ε | z_λ, c] = σ C_c⁻¹ (z - α m_c), p(c | z_λ) ∝ π_c N(z; α m_c, C_c)
and E[ε | z_λ] = Σ_c p(c | z_λ) E[ε | z_λ, c]. These satisfy the sampler's apply contract
and the classifier contract of `guidance`, with no parameters (pass None).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from cfg_jax import schedules

Array = jax.Array


class GaussianMixture(NamedTuple):
  means: Any   # [K, D]
  covs: Any    # [K, D, D]
  probs: Any   # [K]


def _per_component(mixture: GaussianMixture, z: Array, logsnr: Array
                   ) -> tuple[Array, Array]:
  """(E[ε | z, c] [B, K, D], log π_c + log N(z; α m_c, C_c) [B, K])."""
  means = jnp.asarray(mixture.means, jnp.float32)
  covs = jnp.asarray(mixture.covs, jnp.float32)
  alpha, sigma = schedules.alpha_sigma(logsnr)
  alpha, sigma = alpha[:, None, None], sigma[:, None, None]
  cov = alpha[..., None]**2 * covs[None] + sigma[..., None]**2 * jnp.eye(means.shape[-1])
  diff = z[:, None, :] - alpha * means[None]                          # [B, K, D]
  sol = jnp.linalg.solve(cov, diff[..., None])[..., 0]                # C⁻¹ (z - α m)
  log_joint = (jnp.log(jnp.asarray(mixture.probs, jnp.float32))
               - 0.5 * (jnp.sum(diff * sol, -1) + jnp.linalg.slogdet(cov)[1]
                        + means.shape[-1] * jnp.log(2 * jnp.pi)))
  return sigma * sol, log_joint


def eps_fn(mixture: GaussianMixture) -> Callable[[Any, Array, Array, Array], Array]:
  """`apply_fn(params, z, logsnr, labels)`: E[ε | z, c], or E[ε | z] for labels == K (∅)."""
  num_classes = len(mixture.probs)

  def apply_fn(params, z, logsnr, labels):
    del params
    eps, log_joint = _per_component(mixture, z, logsnr)
    uncond = jnp.einsum("bk,bkd->bd", jax.nn.softmax(log_joint, -1), eps)
    cond = jnp.take_along_axis(eps, jnp.minimum(labels, num_classes - 1)[:, None, None], 1)[:, 0]
    return jnp.where((labels == num_classes)[:, None], uncond, cond)

  return apply_fn


def classifier_fn(mixture: GaussianMixture) -> Callable[[Any, Array, Array], Array]:
  """`classifier_fn(params, z, logsnr) -> logits` with softmax(logits) = p(c | z_λ)."""
  def logits(params, z, logsnr):
    del params
    return _per_component(mixture, z, logsnr)[1]
  return logits
