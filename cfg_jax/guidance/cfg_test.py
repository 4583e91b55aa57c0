"""The paper's rule against its formula in numpy, one step and whole trajectories, and the
sampler's CFG against Algorithm 2 written out step by step."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import diffusion
from cfg_jax import guidance
from cfg_jax import sampling
from cfg_jax.guidance import reference

NETWORKS = [reference.mixture_network(), reference.image_network()]


def numpy_cfg(cond, uncond, z, logsnr, w, step, state, prediction):
  """Ho & Salimans, Algorithm 2: (1 + w) out(z, c) - w out(z, ∅)."""
  w = reference.expand(w, cond)
  x, eps = reference.to_x_eps(z, (1. + w) * cond - w * uncond, logsnr, prediction)
  return x, eps, None, state


@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.prediction)
def test_one_step_is_the_papers_mix(network):
  reference.compare_one_step(guidance.CFG(), numpy_cfg, network)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
@pytest.mark.parametrize("network", NETWORKS, ids=lambda n: n.prediction)
def test_trajectory_is_the_papers(network, sampler):
  reference.compare_trajectory(sampling.make_sample_fn, "cfg", numpy_cfg, network,
                               sampler=sampler, w=np.float32([0., 1., 3., 0.5] * 3))


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_the_sampler_is_algorithm_2_written_out_to_the_bit(sampler):
  """The rule, its state, the w schedule and the interval machinery add no rounding: the
  sampler's steps are classifier_free's mix and the step functions, bit for bit."""
  network = reference.image_network()
  sample_fn = sampling.make_sample_fn(network.apply_fn, shape=network.shape, num_steps=6,
                                      null_label=3, prediction="v", sampler=sampler)
  labels, w, rng = jnp.int32([0, 1, 2, 1]), jnp.float32([0., 1., 3., 2.]), jax.random.PRNGKey(3)

  @jax.jit
  def step(z, i, rng_steps):
    logsnr = jnp.asarray(sample_fn.logsnrs)[i]
    logsnr_next = jnp.asarray(sample_fn.logsnrs_next)[i]
    batch = jnp.full((4,), logsnr)
    out = guidance.classifier_free(network.apply_fn, None, z, batch, labels, w, 3)
    x, eps = diffusion.to_x_eps(z, out, batch, prediction="v")
    if sampler == "ddim":
      z_next = sampling.ddim_step(x, eps, logsnr_next=logsnr_next)
    else:
      z_next = sampling.stochastic_step(jax.random.fold_in(rng_steps, i), z, x, logsnr=logsnr,
                                        logsnr_next=logsnr_next, v=0.3)
    return jnp.where(i == 5, x, z_next)

  rng_init, rng_steps = jax.random.split(rng)
  z = jax.random.normal(rng_init, (4, *network.shape))
  for i in range(6):
    z = step(z, i, rng_steps)
  np.testing.assert_array_equal(sample_fn.loop(None, rng, labels, w), z)
