"""Tests of the guided sampler with the exact Bayes-optimal ε of a Gaussian mixture."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import diffusion
from cfg_jax import mixture
from cfg_jax import sampling
from cfg_jax import schedules
from cfg_jax.sampling import make_sample_fn

# Three 2-D Gaussians with distinct, anisotropic covariances; ∅ is label 3.
MEANS = jnp.float32([[1.5, 0.], [-0.75, 1.3], [-0.75, -1.3]])
COVS = jnp.float32([[[0.10, 0.03], [0.03, 0.05]],
                    [[0.04, 0.00], [0.00, 0.12]],
                    [[0.08, -0.02], [-0.02, 0.06]]])
MIXTURE = mixture.GaussianMixture(MEANS, COVS, jnp.full((3,), 1 / 3))
NULL = 3
mixture_eps = mixture.eps_fn(MIXTURE)


def _labels(n_per_class):
  return jnp.repeat(jnp.arange(NULL, dtype=jnp.int32), n_per_class)


@pytest.mark.parametrize("sampler", ["stochastic", "ddim"])
def test_w0_reproduces_each_class(sampler):
  n = 3000
  sample_fn = make_sample_fn(mixture_eps, shape=(2,), num_steps=256, null_label=NULL,
                             v=0.3, sampler=sampler)
  x = sample_fn(None, jax.random.PRNGKey(0), _labels(n), 0.)
  chex.assert_shape(x, (3 * n, 2))
  chex.assert_tree_all_finite(x)
  for c in range(NULL):
    xc = np.asarray(x[c * n:(c + 1) * n])
    np.testing.assert_allclose(xc.mean(0), MEANS[c], atol=0.03)
    np.testing.assert_allclose(np.cov(xc.T), COVS[c], atol=0.015)


def test_guidance_moves_classes_apart():
  n = 2000
  sample_fn = make_sample_fn(mixture_eps, shape=(2,), num_steps=128, null_label=NULL)
  spread = {}
  for w in (0., 1., 4.):
    x = np.asarray(sample_fn(None, jax.random.PRNGKey(1), _labels(n), w)).reshape(NULL, n, 2)
    means = x.mean(1)
    spread[w] = np.mean([np.linalg.norm(means[i] - means[j])
                         for i in range(NULL) for j in range(i + 1, NULL)])
  assert spread[0.] < spread[1.] < spread[4.], spread
  # w = 0 keeps the true separation of the class means.
  true = np.mean([np.linalg.norm(MEANS[i] - MEANS[j]) for i in range(NULL) for j in range(i + 1, NULL)])
  np.testing.assert_allclose(spread[0.], true, rtol=0.02)


def test_null_label_samples_the_mixture():
  n = 6000
  sample_fn = make_sample_fn(mixture_eps, shape=(2,), num_steps=128, null_label=NULL)
  x = np.asarray(sample_fn(None, jax.random.PRNGKey(2), jnp.full((n,), NULL, jnp.int32), None))
  np.testing.assert_allclose(x.mean(0), MEANS.mean(0), atol=0.05)


def test_w_zero_equals_no_guidance_and_per_example_w():
  sample_fn = make_sample_fn(mixture_eps, shape=(2,), num_steps=16, null_label=NULL)
  rng, labels = jax.random.PRNGKey(3), _labels(4)
  np.testing.assert_array_equal(sample_fn(None, rng, labels, 0.), sample_fn(None, rng, labels, None))
  w = jnp.float32([0.] * 6 + [2.] * 6)
  mixed = sample_fn(None, rng, labels, w)
  np.testing.assert_allclose(mixed[:6], sample_fn(None, rng, labels, 0.)[:6], atol=1e-6)
  np.testing.assert_allclose(mixed[6:], sample_fn(None, rng, labels, 2.)[6:], atol=1e-6)


def test_one_forward_pass_per_step_on_the_doubled_batch():
  seen = []

  def apply_fn(params, z, logsnr, labels):
    seen.append((z.shape, tuple(np.asarray(labels)) if not isinstance(labels, jax.core.Tracer) else None))
    return mixture_eps(params, z, logsnr, labels)

  labels = _labels(2)
  make_sample_fn(apply_fn, shape=(2,), num_steps=8, null_label=NULL)(None, jax.random.PRNGKey(0), labels, 1.)
  assert [s for s, _ in seen] == [(12, 2)]  # traced once, inside the scan, on 2B rows
  seen.clear()
  make_sample_fn(apply_fn, shape=(2,), num_steps=8, null_label=NULL)(None, jax.random.PRNGKey(0), labels, None)
  assert [s for s, _ in seen] == [(6, 2)]


def test_guidance_interval():
  sample_fn = make_sample_fn(mixture_eps, shape=(2,), num_steps=32, null_label=NULL)
  rng, labels = jax.random.PRNGKey(4), _labels(8)
  empty = make_sample_fn(mixture_eps, shape=(2,), num_steps=32, null_label=NULL,
                         guidance_interval=(30., 40.))
  np.testing.assert_array_equal(empty(None, rng, labels, 3.), sample_fn(None, rng, labels, 0.))
  full = make_sample_fn(mixture_eps, shape=(2,), num_steps=32, null_label=NULL,
                        guidance_interval=(-20., 20.))
  np.testing.assert_allclose(full(None, rng, labels, 3.), sample_fn(None, rng, labels, 3.), atol=1e-6)
  part = make_sample_fn(mixture_eps, shape=(2,), num_steps=32, null_label=NULL,
                        guidance_interval=(-5., 5.))(None, rng, labels, 3.)
  assert not np.allclose(part, sample_fn(None, rng, labels, 3.))
  assert not np.allclose(part, sample_fn(None, rng, labels, 0.))


def test_trajectory_and_clipping():
  sample_fn = make_sample_fn(mixture_eps, shape=(2,), num_steps=10, null_label=NULL,
                             return_trajectory=True, clip_x=True)
  x, trajectory = sample_fn(None, jax.random.PRNGKey(5), _labels(4), 1.)
  chex.assert_shape(trajectory, (10, 12, 2))
  np.testing.assert_array_equal(trajectory[-1], x)
  assert float(jnp.abs(x).max()) <= 1.


@pytest.mark.parametrize("options", [dict(), dict(sampler="ddim", guidance_interval=(-5., 5.)),
                                     dict(return_trajectory=True)])
def test_python_loop_computes_what_the_scan_computes(options):
  sample_fn = make_sample_fn(mixture_eps, shape=(2,), num_steps=12, null_label=NULL, **options)
  rng, labels = jax.random.PRNGKey(7), _labels(4)
  for w in (None, 2.):
    chex.assert_trees_all_close(sample_fn.loop(None, rng, labels, w),
                                sample_fn(None, rng, labels, w), atol=1e-6)
  with pytest.raises(ValueError, match="w must be finite"):
    sample_fn.loop(None, rng, labels, np.inf)


def test_single_step_denoises_from_pure_noise():
  x = make_sample_fn(mixture_eps, shape=(2,), num_steps=1, null_label=NULL)(
      None, jax.random.PRNGKey(6), _labels(500), 0.)
  # One step from λ_min returns E[x | z, c] ≈ the class mean.
  np.testing.assert_allclose(np.asarray(x).reshape(NULL, 500, 2).mean(1), MEANS, atol=1e-3)


def test_no_retrace_on_new_values():
  traces = []

  def apply_fn(params, z, logsnr, labels):
    traces.append(1)
    return mixture_eps(params, z, logsnr, labels)

  sample_fn = make_sample_fn(apply_fn, shape=(2,), num_steps=4, null_label=NULL)
  labels = _labels(2)
  for i, w in enumerate([0.5, 1.0, np.float32(2.), jnp.float32(3.)]):
    sample_fn(None, jax.random.PRNGKey(i), labels, w)
    sample_fn(None, jax.random.PRNGKey(i), labels[::-1], w)
  assert len(traces) == 1
  sample_fn(None, jax.random.PRNGKey(0), labels, jnp.ones(6))  # per-example w: one new trace
  sample_fn(None, jax.random.PRNGKey(1), labels, jnp.zeros(6))
  assert len(traces) == 2


def test_composes_with_jit_and_vmap():
  sample_fn = make_sample_fn(mixture_eps, shape=(2,), num_steps=8, null_label=NULL)
  labels = _labels(3)
  direct = sample_fn(None, jax.random.PRNGKey(0), labels, 1.5)
  jitted = jax.jit(lambda rng, w: sample_fn(None, rng, labels, w))
  np.testing.assert_allclose(jitted(jax.random.PRNGKey(0), 1.5), direct, atol=1e-5)
  rngs = jax.random.split(jax.random.PRNGKey(0), 4)
  batched = jax.vmap(lambda rng, w: sample_fn(None, rng, labels, w))(rngs, jnp.float32([0., 1., 1.5, 2.]))
  chex.assert_shape(batched, (4, 9, 2))
  np.testing.assert_allclose(batched[2], sample_fn(None, rngs[2], labels, 1.5), atol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(logsnr_min=5., logsnr_max=5.), "logsnr_min"),
    (dict(v=1.5), r"v=1.5 is invalid: it must be a number in \[0, 1\]"),
    (dict(v=-0.1), "v=-0.1 is invalid"),
    (dict(shape=[2]), "shape"),
    (dict(shape=(0,)), "shape"),
    (dict(null_label=-1), "null_label"),
    (dict(sampler="ancestral"), "sampler"),
    (dict(prediction="score"), "prediction"),
    (dict(guidance_interval=(5., -5.)), "guidance_interval=.* with lo <= hi"),
    (dict(guidance_interval=None), r"guidance_interval=None is invalid: it must be \(\) to guide"),
    (dict(guidance="cfg++"), "guidance='cfg\\+\\+' is invalid: it must be one of"),
    (dict(guidance="apg", guidance_params={"eta": float("nan")}), "guidance_params.eta=nan"),
    (dict(guidance="apg", guidance_params={"beta": 0.}), r"guidance_params has \['beta'\]"),
    (dict(guidance="cfgpp"), "needs sampler='ddim'"),
    (dict(w_schedule="exp"), "w_schedule='exp' is invalid"),
])
def test_bad_options_raise(kwargs, match):
  options = dict(shape=(2,), num_steps=4, null_label=NULL) | kwargs
  with pytest.raises(ValueError, match=match):
    make_sample_fn(mixture_eps, **options)


@pytest.mark.parametrize("labels,w,match", [
    (jnp.zeros((4,), jnp.float32), 1., "labels must be an integer"),
    (jnp.zeros((4, 1), jnp.int32), 1., "labels must be an integer"),
    (jnp.int32([0, 1, 7]), 1., r"labels must be in \[0, 3\]"),
    (jnp.int32([0, 1, 2]), jnp.ones(2), "w must be a scalar or"),
    (jnp.int32([0, 1, 2]), float("nan"), "w must be finite"),
    (jnp.int32([0, 1, 2]), jnp.float32([1., np.inf, 0.]), "w must be finite"),
])
def test_bad_call_arguments_raise_before_compiling(labels, w, match):
  traces = []

  def apply_fn(params, z, logsnr, labels):
    traces.append(1)
    return mixture_eps(params, z, logsnr, labels)

  sample_fn = make_sample_fn(apply_fn, shape=(2,), num_steps=4, null_label=NULL)
  with pytest.raises(ValueError, match=match):
    sample_fn(None, jax.random.PRNGKey(0), labels, w)
  assert not traces


def test_ddim_step_keeps_x_and_eps_and_moves_to_the_next_logsnr():
  x, eps = jnp.float32([[0.5, -0.2]]), jnp.float32([[1.0, 0.3]])
  alpha, sigma = schedules.alpha_sigma(jnp.float32(1.5))
  np.testing.assert_allclose(sampling.ddim_step(x, eps, logsnr_next=jnp.float32(1.5)),
                             alpha * x + sigma * eps, rtol=1e-6)


def test_stochastic_step_draws_from_the_reverse_gaussian():
  z, x = jnp.full((20_000, 1), 0.4), jnp.full((20_000, 1), -0.3)
  logsnr, logsnr_next, v = jnp.float32(-1.), jnp.float32(0.5), 0.3
  shift = jnp.float32(2.)
  out = np.asarray(sampling.stochastic_step(jax.random.PRNGKey(0), z, x, logsnr=logsnr,
                                            logsnr_next=logsnr_next, v=v, mean_shift=shift))
  var = float(diffusion.reverse_var(logsnr, logsnr_next, v))
  mean = float(diffusion.posterior_mean(z[:1], x[:1], logsnr, logsnr_next)[0, 0]) + var * 2.
  assert abs(out.mean() - mean) < 4 * np.sqrt(var / len(out))
  np.testing.assert_allclose(out.var(), var, rtol=0.05)


def test_classifier_score_and_clipping_stay_on_z():
  """Both return an (x̃, ε̃) pair with α x̃ + σ ε̃ = z, as the sampler's steps need."""
  z = jnp.float32([[2.5, -0.1], [0.3, 0.9]])
  logsnr = jnp.float32([-0.5, 2.])
  eps, g = jnp.float32([[0.2, 0.1], [-0.4, 1.]]), jnp.float32([[1., -1.], [0.5, 0.]])
  alpha, sigma = (a[:, None] for a in schedules.alpha_sigma(logsnr))
  x_score, eps_score = sampling.classifier_score(z, eps, logsnr, g)
  np.testing.assert_allclose(eps_score, eps - sigma * g, rtol=1e-6)
  x_clip, eps_clip = sampling.clipped(z, jnp.float32([[3., -0.5], [0.2, -7.]]), logsnr)
  np.testing.assert_array_equal(x_clip, jnp.float32([[1., -0.5], [0.2, -1.]]))
  for x, e in ((x_score, eps_score), (x_clip, eps_clip)):
    np.testing.assert_allclose(alpha * x + sigma * e, z, rtol=1e-5, atol=1e-6)
