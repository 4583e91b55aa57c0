"""CFG++ (Chung et al. 2024, "CFG++: Manifold-constrained Classifier Free Guidance for
Diffusion Models", Algorithm 1), for the deterministic sampler.

    x̃ = x̂_u + λ (x̂_c - x̂_u),  z' = α' x̃ + σ' ε̂_u,

the guided x̂ re-noised with the unconditional ε instead of the guided one. In this
project's w, λ = 1 + w: the authors' λ ∈ [0, 1] is w ∈ [-1, 0], w = -1 is unconditional
DDIM and w = 0 already guides (x̂_c re-noised with ε̂_u).
"""
from __future__ import annotations

import dataclasses
from typing import Any

from cfg_jax.guidance import base


@dataclasses.dataclass(frozen=True)
class CFGPP(base.Rule):
  """The CFG x̂, re-noised with ε̂(z, ∅)."""
  name = "cfgpp"

  def __call__(self, inputs: base.Inputs, state: Any) -> tuple[base.Guided, Any]:
    x_cond, _ = inputs.to_x_eps(inputs.cond)
    x_uncond, eps_uncond = inputs.to_x_eps(inputs.uncond)
    guided = inputs.from_x(x_cond + inputs.w_like(x_cond) * (x_cond - x_uncond))
    return guided._replace(eps_next=eps_uncond), state

  def check_sampler(self, sampler: str, *, prefix: str = "") -> None:
    if sampler != "ddim":
      raise ValueError(f"{prefix}guidance='cfgpp' is CFG++ for the deterministic sampler: it "
                       f"needs {prefix}sampler='ddim', got {sampler!r}.")
