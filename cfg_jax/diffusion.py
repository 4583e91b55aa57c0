"""The forward process, its posterior and the reverse step, in log-SNR λ (Ho & Salimans, §2).

`logsnr` arrays are per example ([B]) and broadcast against z and x of shape [B, ...].
Every transition goes from λ to λ' with λ < λ' (noisier to cleaner, the sampling
direction). Variances are formed in log space with expm1 and softplus so that they
stay exact when λ' - λ is tiny and at both ends of [-20, 20].
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cfg_jax import schedules

Array = jax.Array
PREDICTIONS = ("eps", "x", "v")


def expand_to(a: Array, x: Array) -> Array:
  """Reshapes a per-example [B] (or scalar) array to broadcast against x [B, ...]."""
  a = jnp.asarray(a, jnp.float32)
  return a.reshape(a.shape + (1,) * (x.ndim - a.ndim))


def check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}.")


def q_sample(x: Array, logsnr: Array, eps: Array) -> Array:
  """z_λ = α_λ x + σ_λ ε, a draw from q(z_λ | x) given the noise ε."""
  alpha, sigma = schedules.alpha_sigma(expand_to(logsnr, x))
  return alpha * x + sigma * eps


def x_from_eps(z: Array, eps: Array, logsnr: Array) -> Array:
  """x = (z - σ ε) / α."""
  alpha, sigma = schedules.alpha_sigma(expand_to(logsnr, z))
  return (z - sigma * eps) / alpha


def eps_from_x(z: Array, x: Array, logsnr: Array) -> Array:
  """ε = (z - α x) / σ."""
  alpha, sigma = schedules.alpha_sigma(expand_to(logsnr, z))
  return (z - alpha * x) / sigma


def v_from_x_eps(x: Array, eps: Array, logsnr: Array) -> Array:
  """v = α ε - σ x (Salimans & Ho, 2022)."""
  alpha, sigma = schedules.alpha_sigma(expand_to(logsnr, x))
  return alpha * eps - sigma * x


def x_eps_from_v(z: Array, v: Array, logsnr: Array) -> tuple[Array, Array]:
  """(x, ε) = (α z - σ v, σ z + α v), exact inverses of z = α x + σ ε and v = α ε - σ x."""
  alpha, sigma = schedules.alpha_sigma(expand_to(logsnr, z))
  return alpha * z - sigma * v, sigma * z + alpha * v


def to_x_eps(z: Array, out: Array, logsnr: Array, *, prediction: str = "eps"
             ) -> tuple[Array, Array]:
  """Converts a network output of the given parameterization to (x̃, ε̃)."""
  check_prediction(prediction)
  if prediction == "eps":
    return x_from_eps(z, out, logsnr), out
  if prediction == "x":
    return out, eps_from_x(z, out, logsnr)
  return x_eps_from_v(z, out, logsnr)


def eps_to_prediction(z: Array, eps: Array, logsnr: Array, *, prediction: str = "eps"
                      ) -> Array:
  """The network output of the given parameterization whose ε is `eps` (inverse of to_x_eps)."""
  check_prediction(prediction)
  if prediction == "eps":
    return eps
  x = x_from_eps(z, eps, logsnr)
  return x if prediction == "x" else v_from_x_eps(x, eps, logsnr)


def prediction_target(x: Array, eps: Array, logsnr: Array, *, prediction: str = "eps"
                      ) -> Array:
  """The regression target of the parameterization: ε, x or v."""
  check_prediction(prediction)
  if prediction == "eps":
    return eps
  if prediction == "x":
    return x
  return v_from_x_eps(x, eps, logsnr)


def _log_one_minus_exp(d: Array) -> Array:
  """log(1 - e^d) for d < 0, accurate for d near 0 (expm1) and for very negative d."""
  return jnp.log(-jnp.expm1(d))


def forward_log_var(logsnr: Array, logsnr_next: Array) -> Array:
  """log σ²_{λ|λ'} = log(1 - e^{λ-λ'}) + log σ²_λ: q(z_λ | z_λ') for λ < λ'."""
  _, log_sigma_sq = schedules.log_alpha_sigma_sq(logsnr)
  return _log_one_minus_exp(logsnr - logsnr_next) + log_sigma_sq


def posterior_log_var(logsnr: Array, logsnr_next: Array) -> Array:
  """log σ̃²_{λ'|λ} = log(1 - e^{λ-λ'}) + log σ²_λ': q(z_λ' | z_λ, x) for λ < λ'."""
  _, log_sigma_sq_next = schedules.log_alpha_sigma_sq(logsnr_next)
  return _log_one_minus_exp(logsnr - logsnr_next) + log_sigma_sq_next


def posterior_mean(z: Array, x: Array, logsnr: Array, logsnr_next: Array) -> Array:
  """μ̃_{λ'|λ}(z_λ, x) = e^{λ-λ'} (α_λ'/α_λ) z_λ + (1 - e^{λ-λ'}) α_λ' x."""
  logsnr, logsnr_next = expand_to(logsnr, z), expand_to(logsnr_next, z)
  log_alpha_sq, _ = schedules.log_alpha_sigma_sq(logsnr)
  log_alpha_sq_next, _ = schedules.log_alpha_sigma_sq(logsnr_next)
  d = logsnr - logsnr_next
  z_coef = jnp.exp(d + 0.5 * (log_alpha_sq_next - log_alpha_sq))
  x_coef = -jnp.expm1(d) * jnp.exp(0.5 * log_alpha_sq_next)
  return z_coef * z + x_coef * x


def posterior(z: Array, x: Array, logsnr: Array, logsnr_next: Array
              ) -> tuple[Array, Array]:
  """(mean, variance) of q(z_λ' | z_λ, x) for λ < λ'; the variance is per example."""
  return (posterior_mean(z, x, logsnr, logsnr_next),
          jnp.exp(posterior_log_var(logsnr, logsnr_next)))


def reverse_log_var(logsnr: Array, logsnr_next: Array, v: float | Array) -> Array:
  """log of (σ̃²_{λ'|λ})^{1-v} (σ²_{λ|λ'})^v, the paper's interpolated reverse variance."""
  return ((1. - v) * posterior_log_var(logsnr, logsnr_next)
          + v * forward_log_var(logsnr, logsnr_next))


def reverse_var(logsnr: Array, logsnr_next: Array, v: float | Array) -> Array:
  """Variance of p_θ(z_λ' | z_λ): σ̃² at v = 0, σ²_{λ|λ'} at v = 1."""
  return jnp.exp(reverse_log_var(logsnr, logsnr_next, v))
