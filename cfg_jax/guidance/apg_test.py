"""Adaptive projected guidance against Sadat et al.'s Algorithm 1 in numpy (their
MomentumBuffer and normalized_guidance); η = 1, no clipping and no momentum is CFG."""
import numpy as np
import pytest

from cfg_jax import guidance
from cfg_jax import sampling
from cfg_jax.guidance import cfg_test
from cfg_jax.guidance import reference


def numpy_apg(eta, norm_threshold, momentum):
  def rule(cond, uncond, z, logsnr, w, step, state, prediction):
    x_cond, _ = reference.to_x_eps(z, cond, logsnr, prediction)
    x_uncond, _ = reference.to_x_eps(z, uncond, logsnr, prediction)
    diff = x_cond - x_uncond
    running_average = diff + momentum * (0. if state is None else state)
    diff = running_average
    if norm_threshold > 0:
      norm = np.sqrt(reference.dot(diff, diff))
      diff = diff * np.minimum(1., norm_threshold / norm)
    unit = x_cond / np.sqrt(reference.dot(x_cond, x_cond))
    parallel = reference.dot(diff, unit) * unit
    update = (diff - parallel) + eta * parallel
    x = x_cond + reference.expand(w, x_cond) * update
    return x, reference.eps_from_x(z, x, logsnr), None, running_average
  return rule


@pytest.mark.parametrize("network", cfg_test.NETWORKS, ids=lambda n: n.prediction)
@pytest.mark.parametrize("params", [dict(eta=0., norm_threshold=0., momentum=0.),
                                    dict(eta=0.3, norm_threshold=1.5, momentum=-0.5)])
def test_one_step_is_sadat_et_al(network, params):
  reference.compare_one_step(guidance.APG(**params), numpy_apg(**params), network)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_trajectory_with_momentum_and_clipping_is_sadat_et_al(sampler):
  params = dict(eta=0.2, norm_threshold=2., momentum=-0.5)
  reference.compare_trajectory(sampling.make_sample_fn, "apg", numpy_apg(**params),
                               reference.image_network(), sampler=sampler,
                               guidance_params=params, w=4.)


def test_the_momentum_state_runs_only_through_the_guided_steps():
  params = dict(eta=0., norm_threshold=0., momentum=-0.75)
  network = reference.mixture_network()
  reference.compare_trajectory(sampling.make_sample_fn, "apg", numpy_apg(**params), network,
                               sampler="ddim", guidance_params=params, w=3., num_steps=16,
                               guidance_interval=(-4., 4.))


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_eta_one_without_clipping_or_momentum_is_cfg(sampler):
  network = reference.image_network()
  params = dict(eta=1., norm_threshold=0., momentum=0.)
  cfg = reference.compare_trajectory(sampling.make_sample_fn, "cfg", cfg_test.numpy_cfg,
                                     network, sampler=sampler, w=3.)
  apg = reference.compare_trajectory(sampling.make_sample_fn, "apg", numpy_apg(**params),
                                     network, sampler=sampler, guidance_params=params, w=3.)
  np.testing.assert_allclose(apg, cfg, rtol=1e-5, atol=1e-5)
