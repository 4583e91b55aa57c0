"""Tests of the benchmarks' shared pieces: the two-pass baseline is the same math, targets."""
import jax
import jax.numpy as jnp
import numpy as np

from bench import common
from cfg_jax import mixture
from cfg_jax import sampling


def test_two_pass_guidance_samples_what_one_pass_samples():
  gaussians = mixture.GaussianMixture(jnp.float32([[1., 0.], [-1., 0.]]),
                                      jnp.tile(0.1 * jnp.eye(2), (2, 1, 1)), jnp.float32([.5, .5]))
  eps_fn = mixture.eps_fn(gaussians)
  one, two = (sampling.make_sample_fn(f, shape=(2,), num_steps=8, null_label=2)
              for f in (eps_fn, common.two_pass_apply(eps_fn)))
  labels = jnp.int32([0, 1, 1])
  np.testing.assert_allclose(one(None, jax.random.PRNGKey(0), labels, 2.),
                             two(None, jax.random.PRNGKey(0), labels, 2.), atol=1e-6)


def test_targets_are_met_in_the_direction_of_their_comparison():
  bounds = {"speed": (">=", 0.4), "ratio": ("<=", 1.0), "unmeasured": ("<=", 1.0)}
  targets = common.judge({"speed": 0.3, "ratio": 1.0}, bounds)
  assert targets == {
      "speed": {"worst": 0.3, "bound": 0.4, "comparison": ">=", "met": False},
      "ratio": {"worst": 1.0, "bound": 1.0, "comparison": "<=", "met": True}}
  targets["speed"]["preset"] = "tiny"
  assert common.targets_table(targets)[2:] == ["| speed (tiny) | 0.30 | >= 0.4 | NO |",
                                              "| ratio | 1.00 | <= 1 | yes |"]
