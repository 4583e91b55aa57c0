"""Guidance rescale against Lin et al.'s Algorithm 2 in numpy; φ = 0 is CFG."""
import numpy as np
import pytest

from cfg_jax import guidance
from cfg_jax import sampling
from cfg_jax.guidance import cfg_test
from cfg_jax.guidance import reference


def numpy_rescale(phi):
  def rule(cond, uncond, z, logsnr, w, step, state, prediction):
    x_cond, _ = reference.to_x_eps(z, cond, logsnr, prediction)
    x_uncond, _ = reference.to_x_eps(z, uncond, logsnr, prediction)
    g = x_cond + reference.expand(w, x_cond) * (x_cond - x_uncond)
    axes = tuple(range(1, g.ndim))
    rescaled = g * x_cond.std(axis=axes, keepdims=True) / g.std(axis=axes, keepdims=True)
    x = phi * rescaled + (1. - phi) * g
    return x, reference.eps_from_x(z, x, logsnr), None, state
  return rule


@pytest.mark.parametrize("network", cfg_test.NETWORKS, ids=lambda n: n.prediction)
def test_one_step_is_lin_et_al(network):
  reference.compare_one_step(guidance.Rescale(phi=0.7), numpy_rescale(0.7), network)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_trajectory_is_lin_et_al(sampler):
  reference.compare_trajectory(sampling.make_sample_fn, "rescale", numpy_rescale(0.5),
                               reference.image_network(), sampler=sampler,
                               guidance_params={"phi": 0.5}, w=3.)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_phi_zero_is_cfg(sampler):
  network = reference.image_network()
  cfg = reference.compare_trajectory(sampling.make_sample_fn, "cfg", cfg_test.numpy_cfg,
                                     network, sampler=sampler, w=3.)
  rescaled = reference.compare_trajectory(sampling.make_sample_fn, "rescale",
                                          numpy_rescale(0.), network, sampler=sampler,
                                          guidance_params={"phi": 0.}, w=3.)
  np.testing.assert_allclose(rescaled, cfg, rtol=1e-5, atol=1e-5)


def test_phi_one_gives_the_conditional_spread():
  inputs = reference.one_step_inputs(reference.image_network())
  out, _ = guidance.Rescale(phi=1.)(inputs, ())
  x_cond, _ = inputs.to_x_eps(inputs.cond)
  np.testing.assert_allclose(np.std(np.asarray(out.x).reshape(5, -1), axis=1),
                             np.std(np.asarray(x_cond).reshape(5, -1), axis=1), rtol=1e-5)
