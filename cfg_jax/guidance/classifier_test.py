"""Tests of classifier guidance with the exact classifier of a 2-D Gaussian mixture."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import guidance
from cfg_jax import mixture
from cfg_jax.sampling import make_sample_fn

MIXTURE = mixture.GaussianMixture(
    means=jnp.float32([[1., 0.], [-1., 0.]]),
    covs=jnp.float32([[[0.3, 0.], [0., 0.1]], [[0.3, 0.], [0., 0.1]]]),
    probs=jnp.float32([0.5, 0.5]))
NULL = 2
N = 3000


def test_classifier_grad_is_the_gradient_of_log_p_c_given_z():
  classifier_fn = mixture.classifier_fn(MIXTURE)
  z = jnp.float32([[0.1, 0.3], [-0.4, 0.2]])
  logsnr, labels = jnp.float32([0.5, -1.]), jnp.int32([0, 1])
  g = guidance.classifier_grad(classifier_fn, None, z, logsnr, labels, jnp.float32(2.))
  h = 1e-3
  for b in range(2):
    for d in range(2):
      dz = jnp.zeros_like(z).at[b, d].set(h)
      lp = lambda z: jax.nn.log_softmax(classifier_fn(None, z, logsnr))[b, labels[b]]
      numeric = (lp(z + dz) - lp(z - dz)) / (2 * h)
      np.testing.assert_allclose(g[b, d], 2. * numeric, rtol=2e-2, atol=1e-4)


@pytest.mark.parametrize("sampler", ["stochastic", "ddim"])
def test_exact_classifier_at_scale_one_turns_unconditional_into_conditional(sampler):
  """∇ log p(z|c) = ∇ log p(z) + ∇ log p(c|z): uncond ε + classifier(s=1) = conditional ε."""
  sample_fn = make_sample_fn(mixture.eps_fn(MIXTURE), shape=(2,), num_steps=256,
                             null_label=NULL, sampler=sampler, condition_model=False,
                             classifier_fn=mixture.classifier_fn(MIXTURE))
  labels = jnp.zeros((N,), jnp.int32)
  x = np.asarray(sample_fn(None, jax.random.PRNGKey(0), labels, classifier_params=None,
                           classifier_scale=1.))
  np.testing.assert_allclose(x.mean(0), MIXTURE.means[0], atol=0.05)
  np.testing.assert_allclose(np.cov(x.T), MIXTURE.covs[0], atol=0.05)


@pytest.mark.parametrize("sampler", ["stochastic", "ddim"])
def test_scale_pushes_samples_toward_the_class(sampler):
  sample_fn = make_sample_fn(mixture.eps_fn(MIXTURE), shape=(2,), num_steps=64,
                             null_label=NULL, sampler=sampler, condition_model=False,
                             classifier_fn=mixture.classifier_fn(MIXTURE))
  labels = jnp.ones((N,), jnp.int32)  # class 1 sits at x = -1
  mean_x = {s: float(np.mean(sample_fn(None, jax.random.PRNGKey(1), labels,
                                       classifier_params=None, classifier_scale=s)[:, 0]))
            for s in (0., 1., 4.)}
  assert mean_x[0.] > mean_x[1.] > mean_x[4.], mean_x
  np.testing.assert_allclose(mean_x[0.], 0., atol=0.08)   # s = 0: the whole mixture


def test_classifier_guidance_combines_with_classifier_free():
  sample_fn = make_sample_fn(mixture.eps_fn(MIXTURE), shape=(2,), num_steps=32,
                             null_label=NULL, classifier_fn=mixture.classifier_fn(MIXTURE))
  labels, rng = jnp.zeros((64,), jnp.int32), jax.random.PRNGKey(2)
  plain = sample_fn(None, rng, labels, 1., classifier_params=None, classifier_scale=0.)
  no_classifier = make_sample_fn(mixture.eps_fn(MIXTURE), shape=(2,), num_steps=32,
                                 null_label=NULL)(None, rng, labels, 1.)
  np.testing.assert_allclose(plain, no_classifier, atol=1e-5)
  both = sample_fn(None, rng, labels, 1., classifier_params=None, classifier_scale=2.)
  assert float(both[:, 0].mean()) > float(plain[:, 0].mean())


def test_classifier_arguments_are_checked():
  sample_fn = make_sample_fn(mixture.eps_fn(MIXTURE), shape=(2,), num_steps=4,
                             null_label=NULL, condition_model=False,
                             classifier_fn=mixture.classifier_fn(MIXTURE))
  labels, rng = jnp.zeros((4,), jnp.int32), jax.random.PRNGKey(0)
  with pytest.raises(ValueError, match="pass classifier_scale"):
    sample_fn(None, rng, labels)
  with pytest.raises(ValueError, match="classifier_scale must be finite"):
    sample_fn(None, rng, labels, classifier_params=(), classifier_scale=float("inf"))
  with pytest.raises(ValueError, match="w .* needs a conditional model"):
    sample_fn(None, rng, labels, 1., classifier_params=(), classifier_scale=1.)
  plain = make_sample_fn(mixture.eps_fn(MIXTURE), shape=(2,), num_steps=4, null_label=NULL)
  with pytest.raises(ValueError, match="need make_sample_fn"):
    plain(None, rng, labels, 1., classifier_params=(), classifier_scale=1.)
