"""Adaptive projected guidance (Sadat et al. 2024, "Eliminating Oversaturation and Artifacts
of High Guidance Scales in Diffusion Models", Algorithm 1), on x̂ as its authors advise.

    Δ = x̂_c - x̂_u;  Δ ← Δ + β Δ̄  (Δ̄, the running average, is the state: Δ̄ ← Δ);
    Δ ← Δ · min(1, r / ‖Δ‖) when r > 0;
    Δ∥ = (⟨Δ, x̂_c⟩ / ⟨x̂_c, x̂_c⟩) x̂_c,  Δ⊥ = Δ - Δ∥;
    x̃ = x̂_c + w (Δ⊥ + η Δ∥),

norms and inner products per example. η = 1, r = 0 and β = 0 is CFG on x̂; the authors
use η = 0 (the parallel part is what oversaturates) and a negative β.
"""
from __future__ import annotations

import dataclasses
import jax
import jax.numpy as jnp

from cfg_jax import checks
from cfg_jax.guidance import base

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class APG(base.Rule):
  """CFG's direction split along x̂_c: the parallel part scaled by η, its norm clipped at
  `norm_threshold` (0: no clipping), averaged over steps with `momentum` β."""
  eta: float = 0.
  norm_threshold: float = 0.
  momentum: float = 0.
  name = "apg"
  PARAMS = {"eta": checks.REAL, "norm_threshold": checks.NON_NEGATIVE,
            "momentum": checks.real_in(-1, 1, lo_open=True, hi_open=True)}

  def init(self, z: Array) -> Array:
    """The running average Δ̄ of the guidance direction, zero before the first step."""
    return jnp.zeros_like(z)

  def __call__(self, inputs: base.Inputs, state: Array) -> tuple[base.Guided, Array]:
    x_cond, _ = inputs.to_x_eps(inputs.cond)
    x_uncond, _ = inputs.to_x_eps(inputs.uncond)
    delta = (x_cond - x_uncond) + self.momentum * state
    average = delta
    if self.norm_threshold > 0:
      delta = delta * jnp.minimum(1., self.norm_threshold / base.per_example_norm(delta))
    norm_cond = base.per_example_norm(x_cond)
    unit = x_cond / jnp.where(norm_cond > 0, norm_cond, 1.)
    parallel = base.per_example_dot(delta, unit) * unit
    update = (delta - parallel) + self.eta * parallel
    return inputs.from_x(x_cond + inputs.w_like(x_cond) * update), average
