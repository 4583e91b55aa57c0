"""Schedules of the guidance weight over the noise level: w_t = w · scale(u), with
u = u(λ) ∈ [0, 1] the bounded time of the sampler's cosine schedule (1 at λ_min).

    constant  1
    linear    2 (1 - u)
    cosine    1 + cos(π u)

linear and cosine rise from 0 at pure noise to 2 at λ_max and average 1 over u, so the
same w spends the same guidance in total (the increasing schedules of Wang et al. 2024,
"Analysis of Classifier-Free Guidance Weight Schedulers"). They compose with every rule,
with per-example w and with the guidance interval.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cfg_jax import schedules

Array = jax.Array
W_SCHEDULES = ("constant", "linear", "cosine")


def w_scale(w_schedule: str, logsnr: Array, *, logsnr_min: float, logsnr_max: float) -> Array:
  """The factor of w at λ under `w_schedule` (one of W_SCHEDULES)."""
  if w_schedule not in W_SCHEDULES:
    raise ValueError(f"w_schedule must be one of {W_SCHEDULES}, got {w_schedule!r}.")
  u = schedules.inverse_logsnr_schedule_cosine(logsnr, logsnr_min=logsnr_min,
                                               logsnr_max=logsnr_max)
  if w_schedule == "constant":
    return jnp.ones_like(u)
  if w_schedule == "linear":
    return 2. * (1. - u)
  return 1. + jnp.cos(math.pi * u)
