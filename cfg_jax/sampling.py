"""Algorithm 2 of Ho & Salimans: classifier-free guided sampling as one jitted `lax.scan`.

    from cfg_jax.sampling import make_sample_fn
    sample_fn = make_sample_fn(apply_fn, shape=(32, 32, 1), num_steps=256, null_label=10)
    x = sample_fn(params, rng, labels, w)

`apply_fn(params, z, logsnr, labels) -> out` with z [B, *shape], logsnr float32 [B] and
labels int32 [B]; `out` is the network's ε (or x or v, see `prediction`).

`w` is the paper's guidance weight: ε̃ = (1 + w) ε_θ(z, c) - w ε_θ(z, ∅). The common
"guidance scale" is s = 1 + w, so w = 0 is plain conditional sampling and w = -1 is
unconditional. Each guided step evaluates the conditional and unconditional network in
ONE forward pass on the doubled batch [z; z] with labels [c; ∅]. `w=None` skips guidance
altogether: one pass per step on the labels as given.

The combination is taken on the network output in its own parameterization: ε, x and v
are affine in each other with the same z, so mixing any of them is the paper's mix of ε.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax import diffusion
from cfg_jax import schedules

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array, Array], Array]
SAMPLERS = ("stochastic", "ddim")


def _is_concrete(x: Any) -> bool:
  return not isinstance(x, jax.core.Tracer)


def _check_options(*, shape, num_steps, null_label, v, logsnr_min, logsnr_max,
                   prediction, sampler, guidance_interval) -> None:
  """Rejects bad sampler options with a message naming the argument."""
  if not (isinstance(shape, tuple) and shape
          and all(isinstance(d, (int, np.integer)) and d > 0 for d in shape)):
    raise ValueError(f"shape must be a non-empty tuple of positive ints (the per-example "
                     f"shape, e.g. (2,) or (32, 32, 1)), got {shape!r}.")
  if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
    raise ValueError(f"num_steps must be an int >= 1, got {num_steps!r}.")
  if not isinstance(null_label, (int, np.integer)) or null_label < 0:
    raise ValueError(f"null_label must be an int >= 0 (num_classes), got {null_label!r}.")
  if not (isinstance(v, (int, float)) and 0. <= v <= 1.):
    raise ValueError(f"v must be a float in [0, 1] (paper: 0.3 at 64x64, 0.2 at 128x128), "
                     f"got {v!r}.")
  schedules._check_range(logsnr_min, logsnr_max)
  diffusion.check_prediction(prediction)
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
  if guidance_interval is not None:
    if (len(guidance_interval) != 2
        or not all(isinstance(b, (int, float)) for b in guidance_interval)
        or not guidance_interval[0] <= guidance_interval[1]):
      raise ValueError(f"guidance_interval must be (logsnr_lo, logsnr_hi) with lo <= hi, "
                       f"got {guidance_interval!r}.")


def _check_call(labels: Any, w: Any, null_label: int) -> tuple[Array, Array | None]:
  """Validates labels and w at call time (before any trace) and fixes their dtypes."""
  if not hasattr(labels, "dtype"):
    labels = np.asarray(labels)
  if labels.ndim != 1 or not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f"labels must be an integer array of shape [B], got dtype "
                     f"{labels.dtype} and shape {labels.shape}.")
  if _is_concrete(labels):
    bad = np.asarray(labels)[(np.asarray(labels) < 0) | (np.asarray(labels) > null_label)]
    if bad.size:
      raise ValueError(f"labels must be in [0, {null_label}] (class ids, or null_label="
                       f"{null_label} for unconditional), got {bad[:5].tolist()}.")
  labels = labels.astype(jnp.int32)
  if w is None:
    return labels, None
  if not hasattr(w, "dtype"):
    w = np.asarray(w)
  if w.shape not in ((), labels.shape):
    raise ValueError(f"w must be a scalar or an array of shape [B]={labels.shape}, "
                     f"got shape {w.shape}.")
  if not jnp.issubdtype(w.dtype, jnp.number) or jnp.issubdtype(w.dtype, jnp.complexfloating):
    raise ValueError(f"w must be a real number, got dtype {w.dtype}.")
  if _is_concrete(w) and not np.all(np.isfinite(np.asarray(w))):
    raise ValueError(f"w must be finite, got {np.asarray(w).tolist()}.")
  return labels, w.astype(jnp.float32)


def guided_output(apply_fn: ApplyFn, params: Any, z: Array, logsnr: Array, labels: Array,
                  w: Array, null_label: int) -> Array:
  """(1 + w) out(z, c) - w out(z, ∅), both halves from one pass on the doubled batch."""
  batch = z.shape[0]
  out = apply_fn(params, jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
                 jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
  cond, uncond = out[:batch], out[batch:]
  w = diffusion._bcast(w, cond)
  return cond + w * (cond - uncond)


def make_sample_fn(apply_fn: ApplyFn, *, shape: tuple[int, ...], num_steps: int,
                   null_label: int, v: float = 0.3, logsnr_min: float = -20.,
                   logsnr_max: float = 20., prediction: str = "eps",
                   sampler: str = "stochastic", clip_x: bool = False,
                   guidance_interval: tuple[float, float] | None = None,
                   return_trajectory: bool = False) -> Callable[..., Any]:
  """Builds the jitted guided sampler `sample_fn(params, rng, labels, w)` (Algorithm 2).

  Args:
    apply_fn: `apply_fn(params, z, logsnr, labels) -> out`, the network.
    shape: per-example shape of z, e.g. (2,) or (H, W, C).
    num_steps: T, the number of network evaluations (of the pair, when guided).
    null_label: the label of ∅ (num_classes).
    v: log-space interpolation of the reverse variance between σ̃² (v=0) and σ²_{λ|λ'} (v=1).
    logsnr_min, logsnr_max: the λ range; λ_1 = logsnr_min, λ_T = logsnr_max.
    prediction: what the network outputs: "eps" (paper), "x" or "v".
    sampler: "stochastic" (the paper's reverse step) or "ddim" (deterministic,
      probability flow: z' = α' x̃ + σ' ε̃).
    clip_x: clip x̃ to [-1, 1] (images) and recompute ε̃ from it.
    guidance_interval: (logsnr_lo, logsnr_hi); guidance only at steps whose λ lies in it,
      one unguided pass per step elsewhere. None guides every step.
    return_trajectory: also return z after every step, [T, B, *shape] (the last is x).

  Returns:
    `sample_fn(params, rng, labels, w) -> x` ([B, *shape] float32), or `(x, trajectory)`.
    labels: int [B]; w: None, a float, a scalar array or a [B] array. `sample_fn.lower`
    lowers the jitted core with the same arguments (for AOT compilation and cost analysis).
  """
  _check_options(shape=shape, num_steps=num_steps, null_label=null_label, v=v,
                 logsnr_min=logsnr_min, logsnr_max=logsnr_max, prediction=prediction,
                 sampler=sampler, guidance_interval=guidance_interval)
  shape, num_steps, null_label = tuple(int(d) for d in shape), int(num_steps), int(null_label)
  logsnrs = np.asarray(schedules.sampling_logsnrs(num_steps, logsnr_min=logsnr_min,
                                                  logsnr_max=logsnr_max))
  # The last step returns x̃; its "next" λ only keeps the unused branch finite.
  logsnrs_next = np.append(logsnrs[1:], logsnrs[-1] + 1.).astype(np.float32)
  if guidance_interval is None:
    guided = np.ones(num_steps, bool)
  else:
    guided = (logsnrs >= guidance_interval[0]) & (logsnrs <= guidance_interval[1])

  def denoise(params, z, logsnr_t, labels, w, guide):
    logsnr = jnp.full((z.shape[0],), logsnr_t)
    unguided = lambda: apply_fn(params, z, logsnr, labels).astype(jnp.float32)
    if w is None:
      out = unguided()
    else:
      guided_fn = lambda: guided_output(apply_fn, params, z, logsnr, labels, w,
                                        null_label).astype(jnp.float32)
      out = guided_fn() if guidance_interval is None else jax.lax.cond(
          guide, guided_fn, unguided)
    x, eps = diffusion.to_x_eps(z, out, logsnr, prediction=prediction)
    if clip_x:
      x = jnp.clip(x, -1., 1.)
      eps = diffusion.eps_from_x(z, x, logsnr)
    return x, eps

  def sample(params, rng, labels, w):
    rng_init, rng_steps = jax.random.split(rng)
    z = jax.random.normal(rng_init, (labels.shape[0],) + shape, jnp.float32)

    def step(z, xs):
      i, logsnr_t, logsnr_s, guide = xs
      x, eps = denoise(params, z, logsnr_t, labels, w, guide)
      if sampler == "ddim":
        alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
        z_next = alpha_s * x + sigma_s * eps
      else:
        mean = diffusion.posterior_mean(z, x, logsnr_t, logsnr_s)
        std = jnp.exp(0.5 * diffusion.reverse_log_var(logsnr_t, logsnr_s, v))
        z_next = mean + std * jax.random.normal(jax.random.fold_in(rng_steps, i), z.shape)
      z_next = jnp.where(i == num_steps - 1, x, z_next)
      return z_next, (z_next if return_trajectory else None)

    xs = (jnp.arange(num_steps), jnp.asarray(logsnrs), jnp.asarray(logsnrs_next),
          jnp.asarray(guided))
    x, trajectory = jax.lax.scan(step, z, xs)
    return (x, trajectory) if return_trajectory else x

  jitted = jax.jit(sample)

  def sample_fn(params, rng, labels, w=None):
    labels, w = _check_call(labels, w, null_label)
    return jitted(params, rng, labels, w)

  def lower(params, rng, labels, w=None):
    labels, w = _check_call(labels, w, null_label)
    return jitted.lower(params, rng, labels, w)

  sample_fn.lower = lower
  return sample_fn
