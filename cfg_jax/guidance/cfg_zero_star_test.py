"""CFG-Zero* against Fan et al.'s formula in numpy, on v = α ε - σ x, and its zero-init."""
import jax
import numpy as np
import pytest

from cfg_jax import guidance
from cfg_jax import sampling
from cfg_jax.guidance import cfg_test
from cfg_jax.guidance import reference


def numpy_cfg_zero_star(zero_init_steps):
  def rule(cond, uncond, z, logsnr, w, step, state, prediction):
    v_cond, v_uncond = (reference.v_of(*reference.to_x_eps(z, out, logsnr, prediction), logsnr)
                        for out in (cond, uncond))
    s = reference.dot(v_cond, v_uncond) / reference.dot(v_uncond, v_uncond)
    v = s * v_uncond + (1. + reference.expand(w, v_cond)) * (v_cond - s * v_uncond)
    x, eps = reference.to_x_eps(z, v, logsnr, "v")
    if step < zero_init_steps:
      x = np.zeros_like(x)
      eps = reference.eps_from_x(z, x, logsnr)
    return x, eps, None, state
  return rule


@pytest.mark.parametrize("network", cfg_test.NETWORKS, ids=lambda n: n.prediction)
@pytest.mark.parametrize("step", [0, 3])
def test_one_step_is_fan_et_al(network, step):
  reference.compare_one_step(guidance.CFGZeroStar(zero_init_steps=2),
                             numpy_cfg_zero_star(2), network, step=step)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
@pytest.mark.parametrize("network", cfg_test.NETWORKS, ids=lambda n: n.prediction)
def test_trajectory_is_fan_et_al(network, sampler):
  reference.compare_trajectory(sampling.make_sample_fn, "cfg_zero_star",
                               numpy_cfg_zero_star(1), network, sampler=sampler,
                               guidance_params={"zero_init_steps": 1}, w=2.)


def test_the_optimal_scale_is_one_when_the_outputs_agree_in_direction():
  """With out(z, ∅) = out(z, c), s* = 1 and the rule is CFG (which then does nothing)."""
  network = reference.image_network()
  inputs = reference.one_step_inputs(network)._replace(step=np.int32(5))
  inputs = inputs._replace(uncond=inputs.cond)
  out, _ = guidance.CFGZeroStar()(inputs, ())
  x_cond, eps_cond = inputs.to_x_eps(inputs.cond)
  np.testing.assert_allclose(out.x, x_cond, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(out.eps, eps_cond, rtol=1e-4, atol=1e-4)


def test_zero_init_leaves_z_pure_noise():
  """A zeroed DDIM step keeps z's direction: z' = (σ'/σ) z."""
  network = reference.mixture_network()
  sample_fn = sampling.make_sample_fn(network.apply_fn, shape=(2,), num_steps=8, null_label=3,
                                      sampler="ddim", guidance="cfg_zero_star",
                                      guidance_params={"zero_init_steps": 3},
                                      return_trajectory=True)
  _, trajectory = sample_fn(None, jax.random.PRNGKey(0), np.int32([0, 1, 2]), 2.)
  sigmas = reference.alpha_sigma(sample_fn.logsnrs)[1]
  for i in range(2):
    np.testing.assert_allclose(trajectory[i + 1], trajectory[i] * sigmas[i + 2] / sigmas[i + 1],
                               rtol=1e-5)
