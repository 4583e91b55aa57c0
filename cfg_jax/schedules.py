"""The continuous-time log-SNR schedule of Ho & Salimans.

λ = log(α²/σ²) runs over [logsnr_min, logsnr_max]. The schedule is the
"hyperbolic secant truncated to the interval":

    λ(u) = -2 log tan(a u + b),  b = arctan(e^{-λ_max/2}),  a = arctan(e^{-λ_min/2}) - b,

so u = 0 gives λ_max and u = 1 gives λ_min. All functions are pure, vectorized and
float32-safe over [-20, 20]: near either end the angle a u + b is within ~1e-4 of 0
or of π/2, so each end is computed from the small angle it is close to.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

Array = jax.Array


def check_logsnr_range(logsnr_min: float, logsnr_max: float, *, prefix: str = "") -> None:
  """ValueError unless logsnr_min < logsnr_max, both finite; `prefix` qualifies the names
  in the message (e.g. "config.diffusion.")."""
  lo, hi = f"{prefix}logsnr_min", f"{prefix}logsnr_max"
  if not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max)):
    raise ValueError(f"{lo} and {hi} must be finite, got {lo}={logsnr_min}, {hi}={logsnr_max}.")
  if not logsnr_min < logsnr_max:
    raise ValueError(f"{lo}={logsnr_min} must be < {hi}={logsnr_max}.")


def _angles(logsnr_min: float, logsnr_max: float) -> tuple[float, float, float]:
  """(a, b, c) in float64: the angle is a u + b, and π/2 - (a u + b) = a (1 - u) + c."""
  check_logsnr_range(logsnr_min, logsnr_max)
  b = math.atan(math.exp(-0.5 * logsnr_max))
  c = math.atan(math.exp(0.5 * logsnr_min))  # = π/2 - arctan(e^{-λ_min/2})
  a = math.pi / 2 - b - c
  return a, b, c


def logsnr_schedule_cosine(u: Array, *, logsnr_min: float = -20.,
                           logsnr_max: float = 20.) -> Array:
  """λ(u) for u in [0, 1]: the truncated hyperbolic-secant (a.k.a. cosine) schedule."""
  a, b, c = _angles(logsnr_min, logsnr_max)
  u = jnp.asarray(u, jnp.float32)
  # tan(θ) for θ < π/4 from θ itself, above from its complement π/2 - θ = a(1-u) + c.
  near_max = a * u + b
  near_min = a * (1. - u) + c
  logsnr = jnp.where(near_max <= math.pi / 4,
                     -2. * jnp.log(jnp.tan(jnp.minimum(near_max, math.pi / 4))),
                     2. * jnp.log(jnp.tan(jnp.minimum(near_min, math.pi / 4))))
  return jnp.clip(logsnr, logsnr_min, logsnr_max)


def inverse_logsnr_schedule_cosine(logsnr: Array, *, logsnr_min: float = -20.,
                                   logsnr_max: float = 20.) -> Array:
  """u(λ), the inverse of `logsnr_schedule_cosine` on [logsnr_min, logsnr_max]."""
  a, b, c = _angles(logsnr_min, logsnr_max)
  logsnr = jnp.clip(jnp.asarray(logsnr, jnp.float32), logsnr_min, logsnr_max)
  # arctan(e^{-λ/2}) - b is accurate for λ >= 0; for λ < 0 use 1 - (arctan(e^{λ/2}) - c)/a.
  from_max = (jnp.arctan(jnp.exp(-0.5 * jnp.maximum(logsnr, 0.))) - b) / a
  from_min = 1. - (jnp.arctan(jnp.exp(0.5 * jnp.minimum(logsnr, 0.))) - c) / a
  return jnp.clip(jnp.where(logsnr >= 0., from_max, from_min), 0., 1.)


def logsnr_to_time(logsnr: Array) -> Array:
  """The bounded time the network sees: t = arctan(e^{-λ/2}) / (π/2) in (0, 1).

  This is u(λ) of the untruncated schedule, so t is uniform in distribution when λ
  follows the hyperbolic-secant p(λ), and t = 0.5 at λ = 0; large λ (clean) maps to 0.
  """
  logsnr = jnp.asarray(logsnr, jnp.float32)
  angle = jnp.where(logsnr >= 0., jnp.arctan(jnp.exp(-0.5 * jnp.maximum(logsnr, 0.))),
                    math.pi / 2 - jnp.arctan(jnp.exp(0.5 * jnp.minimum(logsnr, 0.))))
  return angle / (math.pi / 2)


def alpha_sigma(logsnr: Array) -> tuple[Array, Array]:
  """(α_λ, σ_λ) with α² = sigmoid(λ) and σ² = sigmoid(-λ); α² + σ² = 1."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return jnp.sqrt(jax.nn.sigmoid(logsnr)), jnp.sqrt(jax.nn.sigmoid(-logsnr))


def log_alpha_sigma_sq(logsnr: Array) -> tuple[Array, Array]:
  """(log α², log σ²) = (-softplus(-λ), -softplus(λ)), exact at both ends of the range."""
  logsnr = jnp.asarray(logsnr, jnp.float32)
  return -jax.nn.softplus(-logsnr), -jax.nn.softplus(logsnr)


def sample_logsnr(rng: Array, shape: tuple[int, ...], *, logsnr_min: float = -20.,
                  logsnr_max: float = 20.) -> Array:
  """Draws λ from the training distribution p(λ): λ(u) with u ~ U[0, 1] (Algorithm 1)."""
  u = jax.random.uniform(rng, shape, jnp.float32)
  return logsnr_schedule_cosine(u, logsnr_min=logsnr_min, logsnr_max=logsnr_max)


def sampling_logsnrs(num_steps: int, *, logsnr_min: float = -20.,
                     logsnr_max: float = 20.) -> Array:
  """λ_1 = λ_min < ... < λ_T = λ_max: the schedule at u uniformly spaced from 1 to 0."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  if num_steps == 1:  # z_1 ~ N(0, I) lives at λ_min; one step denoises it from there.
    return jnp.full((1,), logsnr_min, jnp.float32)
  u = jnp.linspace(1., 0., num_steps, dtype=jnp.float32)
  return logsnr_schedule_cosine(u, logsnr_min=logsnr_min, logsnr_max=logsnr_max)


def halving_logsnrs(num_steps: int, *, logsnr_min: float = -20.,
                    logsnr_max: float = 20.) -> Array:
  """λ_0 = λ_min < ... < λ_N = λ_max at u = 1 - k/N: the grid of N deterministic steps,
  each from one value to the next. The grid of 2N steps holds it at every other value, so
  one step can be distilled from two (progressive distillation)."""
  if num_steps < 1:
    raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
  u = 1. - jnp.arange(num_steps + 1, dtype=jnp.float32) / num_steps
  return logsnr_schedule_cosine(u, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
