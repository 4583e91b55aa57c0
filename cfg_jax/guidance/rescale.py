"""Guidance rescale (Lin et al. 2023, "Common Diffusion Noise Schedules and Sample Steps
are Flawed", Algorithm 2), on x̂: the CFG x̂ rescaled toward the conditional's spread.

    g = x̂_c + w (x̂_c - x̂_u),  g_r = g · std(x̂_c) / std(g),  x̃ = φ g_r + (1 - φ) g,

std per example over all its values. φ = 0 is CFG; the authors use φ = 0.7.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

from cfg_jax import checks
from cfg_jax.guidance import base


def per_example_std(x):
  """The standard deviation of each example's values, kept as [B, 1, ...]."""
  return jnp.std(x, axis=tuple(range(1, x.ndim)), keepdims=True)


@dataclasses.dataclass(frozen=True)
class Rescale(base.Rule):
  """CFG on x̂, its std pulled by φ toward the conditional x̂'s."""
  phi: float = 0.7
  name = "rescale"
  PARAMS = {"phi": checks.real_in(0, 1)}

  def __call__(self, inputs: base.Inputs, state: Any) -> tuple[base.Guided, Any]:
    x_cond, _ = inputs.to_x_eps(inputs.cond)
    x_uncond, _ = inputs.to_x_eps(inputs.uncond)
    g = x_cond + inputs.w_like(x_cond) * (x_cond - x_uncond)
    std_g = per_example_std(g)
    ratio = jnp.where(std_g > 0, per_example_std(x_cond) / jnp.where(std_g > 0, std_g, 1.), 1.)
    return inputs.from_x(self.phi * (g * ratio) + (1. - self.phi) * g), state
