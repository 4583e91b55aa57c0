"""Guided distillation (Meng et al. 2023): the targets and losses of its two stages.

Stage 1 trains a student x̂_η(z_λ, c, w), which takes the guidance weight as an input, to
match its teacher's guided output in one pass:

    x̂^w_θ(z_λ, c) = (1 + w) x̂_θ(z_λ, c) - w x̂_θ(z_λ, ∅),   w ~ U[w_min, w_max].

Stage 2 halves the student's number of deterministic steps again and again (progressive
distillation, Salimans & Ho 2022). A student of N steps, on `schedules.halving_logsnrs(N)`,
learns from its teacher of 2N steps: from z_λ at a student grid point λ = λ_k, the teacher
takes two DDIM steps, through λ' to λ'' = λ_{k+1}; the target x̃ is the x whose single DDIM
step from z_λ lands where the teacher's two did,

    x̃ = (z_λ'' - (σ_λ''/σ_λ) z_λ) / (α_λ'' - (σ_λ''/σ_λ) α_λ).

Both losses compare x̂ in x-space with Salimans & Ho's truncated-SNR weight max(e^λ, 1),
whatever the networks output (ε, x or v). z_λ comes from the forward process on data, λ
from p(λ) in stage 1 and uniformly from the student's grid in stage 2, w from U[w_min,
w_max] per example; labels are the data's.

Networks enter as functions of (z, logsnr, labels, w) or (z, logsnr, labels) with their
parameters bound, so a caller chooses eval or train mode (dropout) for each.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from cfg_jax import diffusion
from cfg_jax import guidance
from cfg_jax import sampling
from cfg_jax import schedules

Array = jax.Array
Net = Callable[..., Array]  # net(z, logsnr, labels[, w]) -> output in its parameterization


def x_loss(x_pred: Array, x_target: Array, logsnr: Array) -> Array:
  """mean over the batch of max(e^λ, 1) · mean((x̂ - x̃)²): truncated-SNR weighting."""
  weight = jnp.exp(jnp.maximum(logsnr, 0.))
  sq = jnp.mean(jnp.square(x_pred - x_target).reshape(x_pred.shape[0], -1), axis=-1)
  return jnp.mean(weight * sq)


def guided_x(teacher: Net, z: Array, logsnr: Array, labels: Array, w: Array, *,
             null_label: int, prediction: str) -> Array:
  """The teacher's guided x̂^w(z_λ, c), its two halves from one pass on the doubled batch."""
  out = guidance.classifier_free(lambda _, *a: teacher(*a), None, z, logsnr, labels, w,
                                 null_label)
  return diffusion.to_x_eps(z, out, logsnr, prediction=prediction)[0]


def draw(rng: Array, x: Array, logsnr: Array, w_min: float, w_max: float
         ) -> tuple[Array, Array]:
  """(z_λ = α x + σ ε, w ~ U[w_min, w_max]) for a batch x and its λ [B]."""
  k_eps, k_w = jax.random.split(rng)
  z = diffusion.q_sample(x, logsnr, jax.random.normal(k_eps, x.shape, jnp.float32))
  w = jax.random.uniform(k_w, logsnr.shape, jnp.float32, w_min, w_max)
  return z, w


def stage1_loss(student: Net, teacher: Net, x: Array, labels: Array, rng: Array, *,
                w_min: float, w_max: float, null_label: int, student_prediction: str,
                teacher_prediction: str, logsnr_min: float = -20., logsnr_max: float = 20.
                ) -> Array:
  """Stage 1: the student(z, λ, c, w) against the teacher(z, λ, c)'s guided x̂^w.

  The target is a function of (z, λ, c, w), so the loss is zero exactly when the student
  computes it: the optimum is the guided teacher itself.
  """
  k_logsnr, k_draw = jax.random.split(rng)
  logsnr = schedules.sample_logsnr(k_logsnr, labels.shape, logsnr_min=logsnr_min,
                                   logsnr_max=logsnr_max)
  z, w = draw(k_draw, x, logsnr, w_min, w_max)
  target = jax.lax.stop_gradient(guided_x(teacher, z, logsnr, labels, w,
                                          null_label=null_label, prediction=teacher_prediction))
  x_pred = diffusion.to_x_eps(z, student(z, logsnr, labels, w), logsnr,
                              prediction=student_prediction)[0]
  return x_loss(x_pred, target, logsnr)


def teacher_x_eps(teacher: Net, z: Array, logsnr: Array, labels: Array, w: Array, *,
                  prediction: str, clip_x: bool) -> tuple[Array, Array]:
  """(x̂, ε̂) of a w-conditioned teacher at z_λ, x̂ clipped to [-1, 1] with clip_x, as the
  sampler does."""
  x, eps = diffusion.to_x_eps(z, teacher(z, logsnr, labels, w), logsnr, prediction=prediction)
  return sampling.clipped(z, x, logsnr) if clip_x else (x, eps)


def two_step_target(teacher: Net, z: Array, logsnr: Array, logsnr_mid: Array,
                    logsnr_next: Array, labels: Array, w: Array, *, prediction: str,
                    clip_x: bool) -> Array:
  """x̃: the x whose one DDIM step z_λ -> λ'' lands where the teacher's two, λ -> λ' -> λ'',
  do (λ, λ', λ'' float [B])."""
  expand = lambda a: diffusion.expand_to(a, z)
  x, eps = teacher_x_eps(teacher, z, logsnr, labels, w, prediction=prediction, clip_x=clip_x)
  z_mid = sampling.ddim_step(x, eps, logsnr_next=expand(logsnr_mid))
  x, eps = teacher_x_eps(teacher, z_mid, logsnr_mid, labels, w, prediction=prediction,
                         clip_x=clip_x)
  z_next = sampling.ddim_step(x, eps, logsnr_next=expand(logsnr_next))
  alpha, sigma = (expand(a) for a in schedules.alpha_sigma(logsnr))
  alpha_next, sigma_next = (expand(a) for a in schedules.alpha_sigma(logsnr_next))
  ratio = sigma_next / sigma
  return (z_next - ratio * z) / (alpha_next - ratio * alpha)


def stage2_loss(student: Net, teacher: Net, x: Array, labels: Array, rng: Array, *,
                num_steps: int, w_min: float, w_max: float, prediction: str, clip_x: bool,
                logsnr_min: float = -20., logsnr_max: float = 20.) -> Array:
  """Stage 2: the student of num_steps steps against two steps of its teacher of 2·num_steps
  (both w-conditioned, of the same parameterization), at a student grid point drawn
  uniformly per example."""
  k_step, k_draw = jax.random.split(rng)
  grid = schedules.halving_logsnrs(2 * num_steps, logsnr_min=logsnr_min, logsnr_max=logsnr_max)
  k = 2 * jax.random.randint(k_step, labels.shape, 0, num_steps)
  logsnr, logsnr_mid, logsnr_next = grid[k], grid[k + 1], grid[k + 2]
  z, w = draw(k_draw, x, logsnr, w_min, w_max)
  target = jax.lax.stop_gradient(two_step_target(
      teacher, z, logsnr, logsnr_mid, logsnr_next, labels, w, prediction=prediction,
      clip_x=clip_x))
  x_pred = diffusion.to_x_eps(z, student(z, logsnr, labels, w), logsnr, prediction=prediction)[0]
  return x_loss(x_pred, target, logsnr)
