"""CFG++ against Chung et al.'s Algorithm 1 in numpy: DDIM re-noised with ε(z, ∅)."""
import numpy as np
import pytest

from cfg_jax import guidance
from cfg_jax import sampling
from cfg_jax.guidance import cfg_test
from cfg_jax.guidance import reference


def numpy_cfgpp(cond, uncond, z, logsnr, w, step, state, prediction):
  """x̃ = x̂_∅ + λ (x̂_c - x̂_∅) with λ = 1 + w; the next z re-noises x̃ with ε̂_∅."""
  x_cond, _ = reference.to_x_eps(z, cond, logsnr, prediction)
  x_uncond, eps_uncond = reference.to_x_eps(z, uncond, logsnr, prediction)
  x = x_uncond + (1. + reference.expand(w, x_cond)) * (x_cond - x_uncond)
  return x, reference.eps_from_x(z, x, logsnr), eps_uncond, state


@pytest.mark.parametrize("network", cfg_test.NETWORKS, ids=lambda n: n.prediction)
def test_one_step_is_chung_et_al(network):
  reference.compare_one_step(guidance.CFGPP(), numpy_cfgpp, network)


@pytest.mark.parametrize("network", cfg_test.NETWORKS, ids=lambda n: n.prediction)
def test_trajectory_is_chung_et_al(network):
  x = reference.compare_trajectory(sampling.make_sample_fn, "cfgpp", numpy_cfgpp, network,
                                   sampler="ddim", w=-0.4)
  cfg = reference.compare_trajectory(sampling.make_sample_fn, "cfg", cfg_test.numpy_cfg,
                                     network, sampler="ddim", w=-0.4)
  assert not np.allclose(x, cfg, atol=1e-3)  # the re-noising is what differs


def test_w_minus_one_is_unconditional_ddim():
  network = reference.mixture_network()
  x = reference.compare_trajectory(sampling.make_sample_fn, "cfgpp", numpy_cfgpp, network,
                                   sampler="ddim", w=-1.)
  cfg = reference.compare_trajectory(sampling.make_sample_fn, "cfg", cfg_test.numpy_cfg,
                                     network, sampler="ddim", w=-1.)
  np.testing.assert_allclose(x, cfg, rtol=1e-5, atol=1e-5)


def test_is_refused_for_the_stochastic_sampler():
  network = reference.mixture_network()
  with pytest.raises(ValueError, match="guidance='cfgpp' is CFG\\+\\+ for the deterministic "
                                       "sampler: it needs sampler='ddim', got 'stochastic'"):
    sampling.make_sample_fn(network.apply_fn, shape=(2,), num_steps=4, null_label=3,
                            guidance="cfgpp")
