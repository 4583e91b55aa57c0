"""CFG-Zero* (Fan et al. 2025, "CFG-Zero*: Improved Classifier-Free Guidance for Flow
Matching Models"): the unconditional output scaled by its optimal s*, and the first
steps zeroed.

    s* = ⟨v_c, v_u⟩ / ‖v_u‖²,  ṽ = s* v_u + (1 + w)(v_c - s* v_u),

per example. The authors define it on the flow velocity ε - x; here it is taken on
v = α ε - σ x, the same velocity of the variance-preserving process (dz/dφ with
φ = arctan(σ/α)), whatever the network predicts. Zeroing the velocity holds z still; here
the first `zero_init_steps` steps predict x̃ = 0 (ε̃ = z / σ), which leaves z pure noise:
the deterministic step only rescales it by σ'/σ.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from cfg_jax import checks
from cfg_jax import diffusion
from cfg_jax import schedules
from cfg_jax.guidance import base


@dataclasses.dataclass(frozen=True)
class CFGZeroStar(base.Rule):
  """CFG on v with the unconditional v scaled by s*; the first steps zeroed."""
  zero_init_steps: int = 1
  name = "cfg_zero_star"
  PARAMS = {"zero_init_steps": checks.int_at_least(0)}

  def __call__(self, inputs: base.Inputs, state: Any) -> tuple[base.Guided, Any]:
    v_cond, v_uncond = (inputs.cond, inputs.uncond) if inputs.prediction == "v" else (
        diffusion.v_from_x_eps(*inputs.to_x_eps(out), inputs.logsnr)
        for out in (inputs.cond, inputs.uncond))
    norm_sq = base.per_example_dot(v_uncond, v_uncond)
    s = jnp.where(norm_sq > 0,
                  base.per_example_dot(v_cond, v_uncond) / jnp.where(norm_sq > 0, norm_sq, 1.),
                  1.)
    v = s * v_uncond + (1. + inputs.w_like(v_cond)) * (v_cond - s * v_uncond)
    x, eps = diffusion.x_eps_from_v(inputs.z, v, inputs.logsnr)
    sigma = diffusion.expand_to(schedules.alpha_sigma(inputs.logsnr)[1], inputs.z)
    zero = inputs.step < self.zero_init_steps
    return base.Guided(jnp.where(zero, 0., x), jnp.where(zero, inputs.z / sigma, eps)), state
