"""Tests of the forward process, posterior, reverse variance and parameterizations."""
import hypothesis
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import diffusion
from cfg_jax import schedules

# (λ, λ') with λ < λ' inside [-20, 20].
pairs = st.tuples(st.floats(-20., 19.9), st.floats(1e-3, 40.)).map(
    lambda p: (p[0], min(p[0] + p[1], 20.))).filter(lambda p: p[1] - p[0] >= 1e-3)


def _coefs(logsnr, logsnr_next):
  one, zero = jnp.ones((1, 1)), jnp.zeros((1, 1))
  lam, lam_next = jnp.float32([logsnr]), jnp.float32([logsnr_next])
  z_coef = diffusion.posterior_mean(one, zero, lam, lam_next)[0, 0]
  x_coef = diffusion.posterior_mean(zero, one, lam, lam_next)[0, 0]
  return z_coef, x_coef, lam, lam_next


@hypothesis.given(pairs)
def test_posterior_consistency_analytic(p):
  """z_λ ~ q(z_λ|x), then z_λ' ~ q(z_λ'|z_λ,x), has the moments of q(z_λ'|x)."""
  z_coef, x_coef, lam, lam_next = _coefs(*p)
  alpha, sigma = schedules.alpha_sigma(lam[0])
  alpha_next, sigma_next = schedules.alpha_sigma(lam_next[0])
  var = jnp.exp(diffusion.posterior_log_var(lam, lam_next))[0]
  np.testing.assert_allclose(z_coef * alpha + x_coef, alpha_next, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(z_coef**2 * sigma**2 + var, sigma_next**2, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("logsnr,logsnr_next", [(-20., -10.), (-2., 1.), (3., 3.5), (10., 20.)])
def test_posterior_consistency_monte_carlo(logsnr, logsnr_next):
  n = 200_000
  x = jnp.full((n, 1), 0.7)
  lam, lam_next = jnp.full((n,), logsnr), jnp.full((n,), logsnr_next)
  k1, k2 = jax.random.split(jax.random.PRNGKey(0))
  z = diffusion.q_sample(x, lam, jax.random.normal(k1, x.shape))
  mean, var = diffusion.posterior(z, x, lam, lam_next)
  z_next = mean + jnp.sqrt(var)[:, None] * jax.random.normal(k2, x.shape)
  alpha_next, sigma_next = schedules.alpha_sigma(logsnr_next)
  np.testing.assert_allclose(z_next.mean(), 0.7 * alpha_next, atol=4 * sigma_next / np.sqrt(n))
  np.testing.assert_allclose(z_next.var(), sigma_next**2, rtol=0.02)


@hypothesis.given(pairs)
def test_forward_transition_composes(p):
  """q(z_λ|x) = q(z_λ|z_λ') ∘ q(z_λ'|x): σ_λ² = (α_λ/α_λ')² σ_λ'² + σ²_{λ|λ'}."""
  lam, lam_next = jnp.float32(p[0]), jnp.float32(p[1])
  alpha, sigma = schedules.alpha_sigma(lam)
  alpha_next, sigma_next = schedules.alpha_sigma(lam_next)
  var = jnp.exp(diffusion.forward_log_var(lam, lam_next))
  np.testing.assert_allclose((alpha / alpha_next)**2 * sigma_next**2 + var, sigma**2, rtol=1e-4)


@hypothesis.given(pairs)
def test_reverse_variance_endpoints_and_interpolation(p):
  lam, lam_next = jnp.float32(p[0]), jnp.float32(p[1])
  tilde = jnp.exp(diffusion.posterior_log_var(lam, lam_next))
  forward = jnp.exp(diffusion.forward_log_var(lam, lam_next))
  np.testing.assert_allclose(diffusion.reverse_var(lam, lam_next, 0.), tilde, rtol=1e-6)
  np.testing.assert_allclose(diffusion.reverse_var(lam, lam_next, 1.), forward, rtol=1e-6)
  np.testing.assert_allclose(diffusion.reverse_var(lam, lam_next, 0.3),
                             tilde**0.7 * forward**0.3, rtol=1e-4)


def test_variances_exact_for_tiny_steps():
  lam, lam_next = np.float64(0.5), np.float64(0.5 + 1e-4)
  ref_tilde = -np.expm1(lam - lam_next) / (1 + np.exp(lam_next))
  ours = diffusion.reverse_var(jnp.float32(lam), jnp.float32(lam_next), 0.)
  np.testing.assert_allclose(ours, ref_tilde, rtol=1e-3)
  lam, lam_next = np.float64(-20.), np.float64(20.)
  assert np.isfinite(float(diffusion.reverse_log_var(jnp.float32(lam), jnp.float32(lam_next), 0.3)))


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
@pytest.mark.parametrize("logsnr", [-8., 0., 8.])
def test_parameterizations_round_trip(prediction, logsnr):
  kx, ke = jax.random.split(jax.random.PRNGKey(1))
  x = jax.random.uniform(kx, (8, 4, 4, 3), minval=-1., maxval=1.)
  eps = jax.random.normal(ke, x.shape)
  lam = jnp.full((8,), logsnr)
  z = diffusion.q_sample(x, lam, eps)
  out = diffusion.eps_to_prediction(z, eps, lam, prediction=prediction)
  np.testing.assert_allclose(out, diffusion.prediction_target(x, eps, lam, prediction=prediction),
                             atol=5e-3)
  x_back, eps_back = diffusion.to_x_eps(z, out, lam, prediction=prediction)
  np.testing.assert_allclose(eps_back, eps, atol=5e-3)
  np.testing.assert_allclose(x_back, x, atol=5e-3)


def test_v_definition():
  x, eps, lam = jnp.float32([[0.3]]), jnp.float32([[-1.2]]), jnp.float32([1.5])
  alpha, sigma = schedules.alpha_sigma(lam[0])
  np.testing.assert_allclose(diffusion.v_from_x_eps(x, eps, lam), alpha * eps - sigma * x, rtol=1e-6)


def test_unknown_prediction_raises():
  with pytest.raises(ValueError, match="prediction must be one of"):
    diffusion.to_x_eps(jnp.zeros((1, 2)), jnp.zeros((1, 2)), jnp.zeros((1,)), prediction="score")
