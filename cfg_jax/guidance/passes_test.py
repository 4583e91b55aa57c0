"""The two outputs of a guided step: the doubled batch, and autoguidance's guide network in
one vmapped call (same architecture) or two."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import sampling
from cfg_jax.guidance import cfg_test
from cfg_jax.guidance import passes
from cfg_jax.guidance import reference

NETWORK = reference.image_network()


def scaled_apply_fn(params, z, logsnr, labels):
  """The image toy with a parameter: a guide of the same architecture has another scale."""
  return params["scale"] * NETWORK.apply_fn(None, z, logsnr, labels) + params["shift"]


PARAMS = {"scale": jnp.float32(1.), "shift": jnp.zeros((4, 4, 2))}
GUIDE_PARAMS = {"scale": jnp.float32(0.7), "shift": jnp.full((4, 4, 2), 0.05)}
LABELS = jnp.int32([0, 1, 2, 0, 1, 2])


def _sample_fn(sampler="ddim", **options):
  return sampling.make_sample_fn(scaled_apply_fn, shape=(4, 4, 2), num_steps=10, null_label=3,
                                 prediction="v", sampler=sampler, **options)


def test_one_call_over_the_stacked_params_is_the_two_networks():
  z = jax.random.normal(jax.random.PRNGKey(0), (6, 4, 4, 2))
  logsnr = jnp.linspace(-3., 3., 6)
  stacked = passes.stack_params(PARAMS, GUIDE_PARAMS)
  cond, guide = passes.cond_and_guide_stacked(scaled_apply_fn, stacked, z, logsnr, LABELS)
  np.testing.assert_allclose(cond, scaled_apply_fn(PARAMS, z, logsnr, LABELS), rtol=1e-6)
  np.testing.assert_allclose(guide, scaled_apply_fn(GUIDE_PARAMS, z, logsnr, LABELS), rtol=1e-6)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_autoguidance_is_d1_plus_w_times_d1_minus_d0(sampler):
  """Karras et al. 2024: out = D₁(z, c) + w (D₁(z, c) - D₀(z, c)), the same numpy
  reference as CFG with the guide's output in place of ∅'s."""
  w = np.float32([0., 1., 2.5, 0., 1., 2.5])
  rng = jax.random.PRNGKey(1)
  x = _sample_fn(sampler, guide_fn=scaled_apply_fn)(PARAMS, rng, LABELS, w,
                                                    guide_params=GUIDE_PARAMS)

  def network(z, logsnr, labels):
    """D₁ on the labels; on ∅'s rows (the reference's second pass), D₀ on the labels."""
    params, labels = (GUIDE_PARAMS, LABELS) if labels[0] == 3 else (PARAMS, labels)
    out = scaled_apply_fn(params, jnp.float32(z), jnp.full((6,), logsnr, jnp.float32),
                          jnp.int32(labels))
    return np.asarray(out, np.float64)

  sample_fn = _sample_fn(sampler)
  expected = reference.sample(network, cfg_test.numpy_cfg, rng=rng, labels=np.asarray(LABELS),
                              null_label=3, shape=(4, 4, 2), logsnrs=sample_fn.logsnrs, w=w,
                              sampler=sampler, prediction="v")
  np.testing.assert_allclose(x, expected, rtol=1e-3, atol=5e-4)


def test_a_guide_of_the_same_architecture_runs_in_one_call_and_another_in_two():
  calls = []

  def counted(params, z, logsnr, labels):
    calls.append(z.shape)
    return scaled_apply_fn(params, z, logsnr, labels)

  def other(params, z, logsnr, labels):  # another architecture: a separate apply_fn
    calls.append(("guide",) + z.shape)
    return scaled_apply_fn(params, z, logsnr, labels)

  fn = sampling.make_sample_fn(counted, shape=(4, 4, 2), num_steps=4, null_label=3,
                               prediction="v", guide_fn=counted)
  one = fn(PARAMS, jax.random.PRNGKey(0), LABELS, 2., guide_params=GUIDE_PARAMS)
  assert calls == [(6, 4, 4, 2)]  # traced once, inside the scan, vmapped over both params
  calls.clear()
  fn = sampling.make_sample_fn(counted, shape=(4, 4, 2), num_steps=4, null_label=3,
                               prediction="v", guide_fn=other)
  two = fn(PARAMS, jax.random.PRNGKey(0), LABELS, 2., guide_params=GUIDE_PARAMS)
  assert calls == [(6, 4, 4, 2), ("guide", 6, 4, 4, 2)]
  np.testing.assert_allclose(one, two, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sampler", sampling.SAMPLERS)
def test_a_guide_that_is_the_network_on_null_is_cfg(sampler):
  null_guide = lambda p, z, logsnr, labels: scaled_apply_fn(p, z, logsnr,
                                                            jnp.full_like(labels, 3))
  rng, w = jax.random.PRNGKey(2), jnp.float32([0., 1., 3., 0.5, 2., 4.])
  auto = _sample_fn(sampler, guide_fn=null_guide)(PARAMS, rng, LABELS, w, guide_params=PARAMS)
  cfg = _sample_fn(sampler)(PARAMS, rng, LABELS, w)
  np.testing.assert_allclose(auto, cfg, rtol=1e-5, atol=1e-5)


def test_a_guide_equal_to_the_network_does_not_guide():
  rng = jax.random.PRNGKey(3)
  auto = _sample_fn(guide_fn=scaled_apply_fn)(PARAMS, rng, LABELS, 3., guide_params=PARAMS)
  np.testing.assert_allclose(auto, _sample_fn()(PARAMS, rng, LABELS, 0.), rtol=1e-5, atol=1e-5)


def test_guide_arguments_are_checked_before_tracing():
  fn = _sample_fn(guide_fn=scaled_apply_fn)
  rng = jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="pass guide_params"):
    fn(PARAMS, rng, LABELS, 1.)
  with pytest.raises(ValueError, match="guide_params must have the structure, shapes"):
    fn(PARAMS, rng, LABELS, 1., guide_params={"scale": jnp.float32(1.), "shift": jnp.zeros(3)})
  with pytest.raises(ValueError, match="guide_params need make_sample_fn"):
    _sample_fn()(PARAMS, rng, LABELS, 1., guide_params=PARAMS)
  with pytest.raises(ValueError, match="guide_fn .* guides a conditional model"):
    _sample_fn(guide_fn=scaled_apply_fn, condition_model=False)
