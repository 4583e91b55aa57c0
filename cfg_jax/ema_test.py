"""Tests of the EMA formulas against direct computation: decays, profiles, reconstruction."""
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import ema


@pytest.mark.parametrize("sigma_rel", [0.01, 0.05, 0.10, 0.2, 0.28])
def test_sigma_rel_and_gamma_invert_each_other(sigma_rel):
  gamma = ema.sigma_rel_to_gamma(sigma_rel)
  assert gamma > 0 and ema.gamma_to_sigma_rel(gamma) == pytest.approx(sigma_rel, rel=1e-10)


@pytest.mark.parametrize("sigma_rel", [0., -0.1, 0.29, float("nan")])
def test_a_width_outside_the_profiles_range_is_refused(sigma_rel):
  with pytest.raises(ValueError, match=r"sigma_rel must lie in \(0, 0.2887\)"):
    ema.sigma_rel_to_gamma(sigma_rel)


def _power_weights(gamma, num_steps):
  """The weight of each step's params in the power EMA after num_steps, by running the
  update on one-hot 'params' (step s's params: the s-th unit vector)."""
  tracked = jnp.zeros(num_steps)
  for step in range(num_steps):
    tracked = ema.update(tracked, jnp.eye(num_steps)[step], ema.power_decay(jnp.int32(step), gamma))
  return np.asarray(tracked, np.float64)


def test_the_power_ema_weighs_the_steps_by_the_integrated_profile():
  gamma, t = ema.sigma_rel_to_gamma(0.1), 200
  s = np.arange(1, t + 1)
  expected = (s / t) ** (gamma + 1) - ((s - 1) / t) ** (gamma + 1)
  np.testing.assert_allclose(_power_weights(gamma, t), expected, atol=2e-6)
  # Its relative standard deviation over the run is σ_rel.
  mean = np.sum(expected * (s - 0.5))
  std = np.sqrt(np.sum(expected * (s - 0.5) ** 2) - mean ** 2)
  assert std / t == pytest.approx(0.1, rel=0.01)


def test_the_profiles_inner_products_match_numerical_integration():
  tau = np.linspace(0., 1000., 2_000_001)[1:]
  profile = lambda t, g: np.where(tau <= t, (g + 1) * tau ** g / t ** (g + 1), 0.)
  for (ta, ga), (tb, gb) in [((1000, 6.9), (400, 3.)), ((300, 20.), (1000, 0.5)),
                             ((500, 2.), (500, 9.))]:
    numeric = np.trapezoid(profile(ta, ga) * profile(tb, gb), tau)
    assert ema.profile_inner_products(ta, ga, tb, gb) == pytest.approx(numeric, rel=1e-4)


def test_a_tracked_width_is_reconstructed_from_snapshots_of_two_others():
  """A random-walk 'training run' of 1,000 steps tracks σ_rel 0.05, 0.10 and 0.15; the
  0.10 EMA at the end is rebuilt from the snapshots (every 50 steps) of 0.05 and 0.15."""
  rng = np.random.default_rng(0)
  t, every, dim = 1000, 50, 64
  params = np.cumsum(rng.normal(size=(t, dim)), axis=0) + 0.02 * np.arange(t)[:, None] ** 1.5
  sigma_rels = (0.05, 0.10, 0.15)
  tracked = {s: np.zeros(dim) for s in sigma_rels}
  snapshots = []  # (step, σ_rel, ema)
  for step in range(t):
    for s in sigma_rels:
      beta = float(ema.power_decay(jnp.int32(step), ema.sigma_rel_to_gamma(s)))
      tracked[s] = beta * tracked[s] + (1 - beta) * params[step]
    if (step + 1) % every == 0:
      snapshots += [(step + 1, s, tracked[s].copy()) for s in (0.05, 0.15)]
  steps, widths, values = zip(*snapshots)
  weights = ema.posthoc_coefficients(steps, widths, t, [0.10, 0.05])
  np.testing.assert_allclose(weights.sum(axis=0), 1.)
  rebuilt, rebuilt_005 = ema.combine(values, weights)
  # The error, relative to how far the EMA is from the live weights: 0.01% here.
  error = np.linalg.norm(rebuilt - tracked[0.10]) / np.linalg.norm(tracked[0.10] - params[-1])
  assert error < 0.01, error
  # A width that was snapshotted itself comes back as its last snapshot.
  np.testing.assert_allclose(rebuilt_005, tracked[0.05], rtol=1e-4, atol=1e-4)


def test_constant_decay_is_reached_at_the_step_its_docstring_gives():
  for decay, reached in [(0.995, 1_790), (0.999, 8_990)]:
    at = lambda t, d=decay: float(ema.constant_decay(np.int32(t), d))
    assert at(reached - 1) < np.float32(decay) and at(reached) == pytest.approx(decay, abs=1e-7)
    assert at(reached + 10_000) == np.float32(decay)
    # Before that step the decay does not depend on `decay`.
    assert at(reached - 1, 0.9995) == at(reached - 1) == np.float32(reached / (reached + 9))
