"""Tests of guided distillation with a 2-D Gaussian mixture's exact denoiser as the teacher."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import diffusion
from cfg_jax import distillation
from cfg_jax import guidance
from cfg_jax import mixture
from cfg_jax import sampling
from cfg_jax import schedules

MIXTURE = mixture.GaussianMixture(jnp.float32([[1.5, 0.], [-0.75, 1.3], [-0.75, -1.3]]),
                                  jnp.float32([[[0.10, 0.03], [0.03, 0.05]],
                                               [[0.04, 0.00], [0.00, 0.12]],
                                               [[0.08, -0.02], [-0.02, 0.06]]]),
                                  jnp.full((3,), 1 / 3))
NULL = 3
eps_fn = mixture.eps_fn(MIXTURE)
teacher = lambda z, logsnr, labels: eps_fn(None, z, logsnr, labels)


def guided_teacher(z, logsnr, labels, w):
  """The exact guided ε (1 + w) ε(z, c) - w ε(z, ∅): the stage-1 optimum, w an input."""
  return guidance.classifier_free(eps_fn, None, z, logsnr, labels, w, NULL)


def _data(n, seed=0):
  labels = jnp.arange(n, dtype=jnp.int32) % NULL
  noise = jax.random.normal(jax.random.PRNGKey(seed), (n, 2))
  chol = jnp.linalg.cholesky(MIXTURE.covs)[labels]
  return MIXTURE.means[labels] + jnp.einsum("bij,bj->bi", chol, noise), labels


def test_the_halving_grid_nests_in_the_grid_of_twice_the_steps():
  for n in (1, 2, 4, 8):
    grid = np.asarray(schedules.halving_logsnrs(n))
    assert grid.shape == (n + 1,) and grid[0] == -20. and grid[-1] == 20.
    assert np.all(np.diff(grid) > 0)
    np.testing.assert_array_equal(np.asarray(schedules.halving_logsnrs(2 * n))[::2], grid)


def test_stage1_loss_is_zero_exactly_at_the_guided_teacher():
  x, labels = _data(512)
  loss = lambda student, w_min=0., w_max=4.: float(distillation.stage1_loss(
      student, teacher, x, labels, jax.random.PRNGKey(1), w_min=w_min, w_max=w_max,
      null_label=NULL, student_prediction="eps", teacher_prediction="eps"))
  assert loss(guided_teacher) == 0.
  # Ignoring w, or using another w, is not the optimum.
  assert loss(lambda z, logsnr, labels, w: teacher(z, logsnr, labels)) > 1e-3
  assert loss(lambda z, logsnr, labels, w: guided_teacher(z, logsnr, labels, w + 0.5)) > 1e-4
  # With w = 0 drawn always, the conditional teacher is the optimum.
  assert loss(lambda z, logsnr, labels, w: teacher(z, logsnr, labels), 0., 1e-30) < 1e-10


def test_one_step_from_the_two_step_target_lands_where_the_teacher_does():
  rng = jax.random.PRNGKey(2)
  x, labels = _data(64)
  w = jax.random.uniform(rng, (64,), minval=0., maxval=4.)
  grid = schedules.halving_logsnrs(8)
  for k in (0, 2, 6):  # the student's steps of a 4-step student: λ_k -> λ_{k+2}
    logsnr, mid, nxt = (jnp.full((64,), grid[i]) for i in (k, k + 1, k + 2))
    z = diffusion.q_sample(x, logsnr, jax.random.normal(rng, x.shape))
    target = distillation.two_step_target(guided_teacher, z, logsnr, mid, nxt, labels, w,
                                          prediction="eps", clip_x=False)
    z_mid = z
    for a, b in ((logsnr, mid), (mid, nxt)):  # the teacher's own two DDIM steps
      x_hat, eps_hat = diffusion.to_x_eps(z_mid, guided_teacher(z_mid, a, labels, w), a)
      z_mid = sampling.ddim_step(x_hat, eps_hat, logsnr_next=b[:, None])
    one_step = sampling.ddim_step(target, diffusion.eps_from_x(z, target, logsnr),
                                 logsnr_next=nxt[:, None])
    np.testing.assert_allclose(one_step, z_mid, rtol=1e-4, atol=1e-4)


def test_a_one_step_student_of_a_two_step_teacher_samples_what_the_teacher_does():
  grid = schedules.halving_logsnrs(2)

  def student(params, z, logsnr, labels, w):  # outputs the stage-2 target: x-prediction
    del params, logsnr  # a one-step student runs at λ_min only
    full = lambda i: jnp.full((z.shape[0],), grid[i])
    return distillation.two_step_target(guided_teacher, z, full(0), full(1), full(2), labels,
                                        w, prediction="eps", clip_x=False)

  labels = jnp.arange(300, dtype=jnp.int32) % NULL
  student_fn = sampling.make_student_sample_fn(student, shape=(2,), num_steps=1, null_label=NULL,
                                               prediction="x")
  teacher_fn = sampling.make_student_sample_fn(lambda p, *a: guided_teacher(*a), shape=(2,),
                                               num_steps=2, null_label=NULL, prediction="eps")
  for w in (0., 1., 3.):
    ours = student_fn(None, jax.random.PRNGKey(3), labels, w)
    theirs = teacher_fn(None, jax.random.PRNGKey(3), labels, w)
    # The student returns x̃ at λ_max, the teacher x̂ one step before: equal within σ(λ_max),
    # and float32's x̂ = (z - σ ε̂) / α at λ_min = -20, where α = 4.5e-5.
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)
  x, labels = _data(256)
  teacher_x = lambda z, logsnr, labels, w: diffusion.to_x_eps(
      z, guided_teacher(z, logsnr, labels, w), logsnr)[0]  # the same teacher, predicting x
  loss = distillation.stage2_loss(lambda *a: student(None, *a), teacher_x, x, labels,
                                  jax.random.PRNGKey(4), num_steps=1, w_min=0., w_max=4.,
                                  prediction="x", clip_x=False)
  assert float(loss) < 1e-8


def test_the_student_sampler_runs_one_pass_per_step_and_needs_w():
  calls = []

  def student(params, z, logsnr, labels, w):
    calls.append(z.shape)
    return guided_teacher(z, logsnr, labels, w)

  sample_fn = sampling.make_student_sample_fn(student, shape=(2,), num_steps=4, null_label=NULL,
                                              prediction="eps")
  labels = jnp.zeros((5,), jnp.int32)
  x = sample_fn.loop(None, jax.random.PRNGKey(0), labels, jnp.linspace(0., 2., 5))
  assert x.shape == (5, 2) and calls == [(5, 2)]  # traced once, on the batch itself
  np.testing.assert_allclose(sample_fn(None, jax.random.PRNGKey(0), labels, jnp.linspace(0., 2., 5)),
                             x, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="w is an input of this student network"):
    sample_fn(None, jax.random.PRNGKey(0), labels)
  with pytest.raises(ValueError, match="num_steps=0 is invalid: it must be an int >= 1"):
    sampling.make_student_sample_fn(student, shape=(2,), num_steps=0, null_label=NULL)
