"""Classifier-free guidance (Ho & Salimans): out = (1 + w) out(z, c) - w out(z, ∅).

The mix is taken on the network output in its own parameterization: ε, x and v are
affine in each other with the same z, so mixing any of them is the paper's mix of ε.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax

from cfg_jax import diffusion
from cfg_jax.guidance import base
from cfg_jax.guidance import passes

Array = jax.Array


def mix(cond: Array, uncond: Array, w: Array) -> Array:
  """cond + w (cond - uncond), w a scalar or [B]."""
  return cond + diffusion.expand_to(w, cond) * (cond - uncond)


def classifier_free(apply_fn: Callable[[Any, Array, Array, Array], Array], params: Any,
                    z: Array, logsnr: Array, labels: Array, w: Array, null_label: int) -> Array:
  """(1 + w) out(z, c) - w out(z, ∅), both halves from one pass on the doubled batch."""
  return mix(*passes.cond_and_null(apply_fn, params, z, logsnr, labels, null_label), w)


@dataclasses.dataclass(frozen=True)
class CFG(base.Rule):
  """The paper's rule, on the network's own output."""
  name = "cfg"

  def __call__(self, inputs: base.Inputs, state: Any) -> tuple[base.Guided, Any]:
    out = mix(inputs.cond, inputs.uncond, inputs.w)
    return base.Guided(*inputs.to_x_eps(out)), state
