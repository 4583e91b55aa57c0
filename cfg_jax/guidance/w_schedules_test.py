"""The w schedules over λ: their factors on the sampler's grid, and their composition with
a rule and per-example w."""
import math

import jax
import numpy as np
import pytest

from cfg_jax import guidance
from cfg_jax import sampling
from cfg_jax.guidance import apg_test
from cfg_jax.guidance import reference


@pytest.mark.parametrize("w_schedule,factor", [
    ("constant", lambda u: np.ones_like(u)),
    ("linear", lambda u: 2. * (1. - u)),
    ("cosine", lambda u: 1. + np.cos(math.pi * u)),
])
def test_the_factor_on_the_samplers_grid_uniform_in_u(w_schedule, factor):
  network = reference.mixture_network()
  sample_fn = sampling.make_sample_fn(network.apply_fn, shape=(2,), num_steps=65, null_label=3,
                                      w_schedule=w_schedule)
  u = np.linspace(1., 0., 65)  # the sampler's steps are uniform in u, from λ_min to λ_max
  np.testing.assert_allclose(sample_fn.w_scales, factor(u), atol=1e-4)
  assert abs(np.mean(sample_fn.w_scales) - 1.) < 0.02  # the same guidance in total


def test_w_scale_at_the_ends_of_the_range():
  np.testing.assert_allclose(guidance.w_scale("linear", np.float32([-20., 20.]),
                                              logsnr_min=-20., logsnr_max=20.), [0., 2.],
                             atol=1e-6)
  with pytest.raises(ValueError, match="w_schedule must be one of"):
    guidance.w_scale("exponential", np.float32([0.]), logsnr_min=-20., logsnr_max=20.)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_a_schedule_composes_with_a_rule_per_example_w_and_the_interval(sampler):
  params = dict(eta=0.5, norm_threshold=0., momentum=-0.5)
  network = reference.image_network()
  num_steps = 12
  sample_fn = sampling.make_sample_fn(
      network.apply_fn, shape=network.shape, num_steps=num_steps, null_label=3,
      prediction="v", sampler=sampler, guidance="apg", guidance_params=params,
      w_schedule="cosine", guidance_interval=(-5., 8.))
  labels = np.repeat(np.arange(3), 4).astype(np.int32)
  w = np.float32([0., 1., 2., 4.] * 3)
  rng = jax.random.PRNGKey(7)
  u = np.linspace(1., 0., num_steps)
  expected = reference.sample(network.numpy_fn, apg_test.numpy_apg(**params), rng=rng,
                              labels=labels, null_label=3, shape=network.shape,
                              logsnrs=sample_fn.logsnrs, w=w, sampler=sampler, prediction="v",
                              guided=(sample_fn.logsnrs >= -5.) & (sample_fn.logsnrs <= 8.),
                              w_scales=1. + np.cos(math.pi * u))
  np.testing.assert_allclose(sample_fn(None, rng, labels, w), expected, rtol=1e-3, atol=5e-4)
