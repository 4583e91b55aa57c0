"""What every guidance rule shares: the step's inputs, its result, and the base class.

A rule is a pure function of one guided step. It sees the conditional output out(z, c)
and the unconditional one out(z, ∅) (or, for autoguidance, the weaker guide network's
out(z, c)), both in the network's parameterization, with z, λ, the weight w of each
example and the step's index; it also carries a state through the sampler's `lax.scan`
(`init` makes the first). It returns the guided (x̃, ε̃) the step goes on with and the new
state. `Guided.eps_next` lets a rule re-noise with another ε than the guided one (CFG++).

A rule is a frozen dataclass whose fields are its parameters, each allowed by the
`checks` pair in `PARAMS`, so the config can hold, validate and override them by name.
"""
from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, NamedTuple

import jax
import jax.numpy as jnp

from cfg_jax import checks
from cfg_jax import diffusion

Array = jax.Array


class Inputs(NamedTuple):
  """One guided step, batch first: float32 outputs [B, *shape], λ and w [B], the step's
  index (an int32 scalar, 0 at λ_min) and the network's parameterization (static)."""
  cond: Array
  uncond: Array
  z: Array
  logsnr: Array
  w: Array
  step: Array
  prediction: str

  def to_x_eps(self, out: Array) -> tuple[Array, Array]:
    """(x̂, ε̂) of a network output of this step."""
    return diffusion.to_x_eps(self.z, out, self.logsnr, prediction=self.prediction)

  def w_like(self, x: Array) -> Array:
    """w broadcast against x ([B] or scalar -> [B, 1, ...])."""
    return diffusion.expand_to(self.w, x)

  def from_x(self, x: Array) -> "Guided":
    """The step's result for a guided x̂: (x̂, the ε̂ that keeps z = α x̂ + σ ε̂)."""
    return Guided(x, diffusion.eps_from_x(self.z, x, self.logsnr))


class Guided(NamedTuple):
  """The guided (x̃, ε̃) of a step; `eps_next`, when given, is the ε that the deterministic
  step re-noises with instead of ε̃ (z' = α' x̃ + σ' eps_next)."""
  x: Array
  eps: Array
  eps_next: Array | None = None


def per_example_dot(a: Array, b: Array) -> Array:
  """⟨a, b⟩ over all non-batch axes, kept as [B, 1, ...]."""
  return jnp.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def per_example_norm(a: Array) -> Array:
  """‖a‖ over all non-batch axes, kept as [B, 1, ...]."""
  return jnp.sqrt(per_example_dot(a, a))


@dataclasses.dataclass(frozen=True)
class Rule:
  """The base of the guidance rules; subclasses set `name`, `PARAMS` and `__call__`."""
  name: ClassVar[str]
  PARAMS: ClassVar[dict[str, checks.Check]] = {}

  def __post_init__(self):
    for field in dataclasses.fields(self):
      checks.check(f"guidance_params.{field.name}", getattr(self, field.name),
                   self.PARAMS[field.name])

  def init(self, z: Array) -> Any:
    """The state before the first step (z is z_1); the default rule keeps none."""
    del z
    return ()

  def __call__(self, inputs: Inputs, state: Any) -> tuple[Guided, Any]:
    raise NotImplementedError

  def check_sampler(self, sampler: str, *, prefix: str = "") -> None:
    """ValueError if the rule is not defined for `sampler` (names prefixed by `prefix`)."""
    del sampler, prefix
