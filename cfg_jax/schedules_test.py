"""Tests of the log-SNR schedule: endpoints, monotonicity, inverse, float32 safety."""
import math

import chex
import hypothesis
from hypothesis import strategies as st
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import schedules

ranges = st.tuples(st.floats(-30., 5.), st.floats(0.5, 30.)).filter(lambda r: r[0] < r[1] - 0.5)


def _schedule_f64(u, logsnr_min, logsnr_max):
  b = math.atan(math.exp(-0.5 * logsnr_max))
  a = math.atan(math.exp(-0.5 * logsnr_min)) - b
  return -2. * np.log(np.tan(a * np.asarray(u, np.float64) + b))


@hypothesis.given(st.floats(-20., 20.))
def test_alpha_sq_plus_sigma_sq_is_one(logsnr):
  alpha, sigma = schedules.alpha_sigma(jnp.float32(logsnr))
  np.testing.assert_allclose(alpha**2 + sigma**2, 1., rtol=1e-6)
  np.testing.assert_allclose(jnp.log(alpha**2 / sigma**2), logsnr, atol=1e-4 * max(1., abs(logsnr)))


def test_log_alpha_sigma_sq_exact_at_ends():
  log_a2, log_s2 = schedules.log_alpha_sigma_sq(jnp.array([-20., 20.]))
  np.testing.assert_allclose(log_a2, [-20. - math.log1p(math.exp(-20.)), -math.log1p(math.exp(-20.))], rtol=1e-6)
  np.testing.assert_allclose(log_s2, [-math.log1p(math.exp(-20.)), -20. - math.log1p(math.exp(-20.))], rtol=1e-6)


@hypothesis.given(ranges)
def test_endpoints(r):
  lo, hi = r
  out = schedules.logsnr_schedule_cosine(jnp.array([0., 1.]), logsnr_min=lo, logsnr_max=hi)
  np.testing.assert_allclose(out, [hi, lo], rtol=1e-5, atol=1e-5)


@hypothesis.given(ranges)
def test_monotone_decreasing(r):
  lo, hi = r
  out = np.asarray(schedules.logsnr_schedule_cosine(jnp.linspace(0., 1., 1001),
                                                    logsnr_min=lo, logsnr_max=hi))
  assert np.all(np.diff(out) < 0.)
  assert np.all(np.isfinite(out))


def test_matches_float64_reference_over_whole_range():
  u = np.linspace(0., 1., 100_001, dtype=np.float32)
  ours = np.asarray(schedules.logsnr_schedule_cosine(u))
  ref = _schedule_f64(u.astype(np.float64), -20., 20.)
  # Relative to float32's own rounding of u, there is no cancellation at either end.
  np.testing.assert_allclose(ours, ref, rtol=2e-5, atol=2e-5)


@hypothesis.given(ranges, st.floats(0., 1.))
def test_inverse(r, u):
  lo, hi = r
  logsnr = schedules.logsnr_schedule_cosine(jnp.float32(u), logsnr_min=lo, logsnr_max=hi)
  back = schedules.inverse_logsnr_schedule_cosine(logsnr, logsnr_min=lo, logsnr_max=hi)
  np.testing.assert_allclose(back, np.float32(u), atol=2e-6)


def test_round_trip_through_float32_u_is_as_exact_as_u_allows():
  logsnr = jnp.linspace(-20., 20., 4001)
  u = schedules.inverse_logsnr_schedule_cosine(logsnr)
  back = np.asarray(schedules.logsnr_schedule_cosine(u), np.float64)
  # Near λ_min, u is within 1e-4 of 1 where float32 spacing is 6e-8 and |dλ/du| ~ 7e4:
  # allow two ulps of u times the slope, nothing more.
  b = math.atan(math.exp(-10.))
  a = math.atan(math.exp(10.)) - b
  slope = 4 * a / np.sin(2 * (a * np.asarray(u, np.float64) + b))
  tol = 1e-4 + 2 * np.spacing(np.asarray(u, np.float32)).astype(np.float64) * slope
  assert np.all(np.abs(back - np.asarray(logsnr, np.float64)) <= tol)


def test_logsnr_to_time_is_bounded_and_matches_untruncated_inverse():
  logsnr = jnp.linspace(-20., 20., 101)
  t = schedules.logsnr_to_time(logsnr)
  assert jnp.all((t > 0.) & (t < 1.))
  np.testing.assert_allclose(t, np.arctan(np.exp(-np.asarray(logsnr, np.float64) / 2)) / (np.pi / 2), rtol=1e-5)
  np.testing.assert_allclose(schedules.logsnr_to_time(0.), 0.5)


def test_sample_logsnr_distribution():
  import jax
  logsnr = schedules.sample_logsnr(jax.random.PRNGKey(0), (200_000,))
  chex.assert_shape(logsnr, (200_000,))
  assert float(logsnr.min()) >= -20. and float(logsnr.max()) <= 20.
  # Untruncated p(λ) is the hyperbolic secant: P(λ < 0) = 1/2, P(|λ| < 2 log(tan(3π/8))) = 1/2.
  np.testing.assert_allclose(np.mean(logsnr < 0.), 0.5, atol=0.005)
  np.testing.assert_allclose(np.mean(np.abs(logsnr) < 2 * np.log(np.tan(3 * np.pi / 8))), 0.5, atol=0.005)


def test_sampling_logsnrs():
  logsnrs = schedules.sampling_logsnrs(256)
  chex.assert_shape(logsnrs, (256,))
  np.testing.assert_allclose([logsnrs[0], logsnrs[-1]], [-20., 20.])
  assert np.all(np.diff(np.asarray(logsnrs)) > 0.)
  np.testing.assert_allclose(schedules.sampling_logsnrs(1), [-20.])


@pytest.mark.parametrize("lo,hi", [(0., 0.), (5., -5.), (-math.inf, 20.), (-20., math.nan)])
def test_bad_range_raises(lo, hi):
  with pytest.raises(ValueError, match="logsnr_m"):
    schedules.logsnr_schedule_cosine(0.5, logsnr_min=lo, logsnr_max=hi)


def test_bad_num_steps_raises():
  with pytest.raises(ValueError, match="num_steps"):
    schedules.sampling_logsnrs(0)
