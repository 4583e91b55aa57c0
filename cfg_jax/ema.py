"""Moving averages of the weights: the constant-decay EMA, EDM2's power-function EMA, and
the post-hoc reconstruction of a power EMA of any width from snapshots.

Constant: after each step, ema ← d ema + (1 − d) θ with d = min(decay, (1 + t) / (10 + t)).

Power (Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", section 3 and appendix C): after step t = 1, 2, ..., ema_t = β_t ema_{t−1} +
(1 − β_t) θ_t with β_t = (1 − 1/t)^(γ+1). Then ema_t averages θ_1 … θ_t with the weights
of the profile p(τ) ∝ τ^γ on [0, t], exactly: θ_s weighs (s/t)^(γ+1) − ((s−1)/t)^(γ+1).
The width of the profile relative to the run's length, σ_rel (its standard deviation over
t), fixes γ through σ_rel² = (γ + 1) / ((γ + 2)² (γ + 3)); σ_rel lies in (0, 1/√12), the
upper end being the plain average (γ = 0). The average therefore always spans the same
fraction of the run, however short.

Post-hoc: the snapshots of a few power EMAs at several steps are averages with known
profiles. The profile of any σ_rel at a snapshot step is projected on theirs by least
squares, with the profiles' inner products in closed form, and its EMA is the same
combination of the snapshots (`posthoc_coefficients`, `combine`).
"""
from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("constant", "power")  # config.training.ema
MAX_SIGMA_REL = 1. / math.sqrt(12.)  # γ = 0: every step weighs the same


def sigma_rel_to_gamma(sigma_rel: float) -> float:
  """The exponent γ of the power profile whose relative width is σ_rel: the largest real
  root of γ³ + 7γ² + (16 − σ_rel⁻²) γ + (12 − σ_rel⁻²) (EDM2's algorithm 2)."""
  if not 0. < sigma_rel < MAX_SIGMA_REL:
    raise ValueError(f"sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}), got {sigma_rel}.")
  s = float(sigma_rel) ** -2
  return float(np.roots([1., 7., 16. - s, 12. - s]).real.max())


def gamma_to_sigma_rel(gamma: float) -> float:
  """σ_rel of the power profile with exponent γ ≥ 0."""
  return math.sqrt((gamma + 1.) / ((gamma + 2.) ** 2 * (gamma + 3.)))


def constant_decay(step: jax.Array, decay: float) -> jax.Array:
  """min(decay, (1 + t) / (10 + t)) at step t (steps done before this update): early EMA
  follows the live weights, then settles at decay from step (10 decay − 1) / (1 − decay) on
  (8,990 for 0.999, 99,990 for 0.9999); a shorter run never reaches `decay`, and its EMA
  does not depend on it."""
  step = step.astype(jnp.float32)
  return jnp.minimum(decay, (1. + step) / (10. + step))


def power_decay(step: jax.Array, gamma: float) -> jax.Array:
  """β = (1 − 1/t)^(γ+1) for the update after step t = step + 1 (`step` steps were done
  before it): 0 at the first step, so the EMA starts at the first step's weights."""
  t = step.astype(jnp.float32) + 1.
  return jnp.exp((gamma + 1.) * jnp.log1p(-1. / t))


def update(ema: Any, params: Any, decay: jax.Array) -> Any:
  """decay ema + (1 − decay) params, leaf by leaf."""
  return jax.tree.map(lambda e, p: decay * e + (1. - decay) * p, ema, params)


def profile_inner_products(a_steps, a_gammas, b_steps, b_gammas) -> np.ndarray:
  """∫ p_a(τ) p_b(τ) dτ of power profiles normalized to unit mass on [0, t_a] and
  [0, t_b] (EDM2's equation 151), broadcast over the arguments."""
  a_steps, a_gammas, b_steps, b_gammas = (np.asarray(x, np.float64) for x in
                                          (a_steps, a_gammas, b_steps, b_gammas))
  ratio = a_steps / b_steps
  exponent = np.where(a_steps < b_steps, b_gammas, -a_gammas)
  return ((a_gammas + 1.) * (b_gammas + 1.) * ratio ** exponent
          / ((a_gammas + b_gammas + 1.) * np.maximum(a_steps, b_steps)))


def posthoc_coefficients(in_steps: Sequence[int], in_sigma_rels: Sequence[float],
                         out_step: int, out_sigma_rels: Sequence[float]) -> np.ndarray:
  """[inputs, outputs] weights: output j is Σ_i w_ij snapshot_i, the least-squares
  projection of the σ_rel_j profile at out_step on the snapshots' profiles (snapshot i:
  the EMA of σ_rel in_sigma_rels[i] at step in_steps[i]); each column sums to 1."""
  in_gammas = np.array([sigma_rel_to_gamma(s) for s in in_sigma_rels])
  out_gammas = np.array([sigma_rel_to_gamma(s) for s in out_sigma_rels])
  in_steps = np.asarray(in_steps, np.float64)
  col, row = (lambda x: x.reshape(-1, 1)), (lambda x: x.reshape(1, -1))
  gram = profile_inner_products(col(in_steps), col(in_gammas), row(in_steps), row(in_gammas))
  cross = profile_inner_products(col(in_steps), col(in_gammas),
                                 np.full((1, len(out_gammas)), float(out_step)), row(out_gammas))
  weights = np.linalg.lstsq(gram, cross, rcond=None)[0]
  return weights / weights.sum(axis=0, keepdims=True)


def combine(snapshots: Iterable[Any], weights: np.ndarray) -> list[Any]:
  """[Σ_i weights[i, j] snapshots[i] for each column j], accumulated in float64 on the host
  one snapshot at a time and returned as float32 numpy trees."""
  totals = None
  for snapshot, row in zip(snapshots, np.asarray(weights, np.float64)):
    snapshot = jax.tree.map(lambda x: np.asarray(x, np.float64), snapshot)
    if totals is None:
      totals = [jax.tree.map(np.zeros_like, snapshot) for _ in row]
    totals = [jax.tree.map(lambda acc, x, w=w: acc + w * x, total, snapshot)
              for total, w in zip(totals, row)]
  return [jax.tree.map(lambda x: x.astype(np.float32), total) for total in totals]
