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
from cfg_jax import guidance
from cfg_jax import schedules
from cfg_jax import xla_options

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array, Array], Array]
SAMPLERS = ("stochastic", "ddim")


def _is_concrete(x: Any) -> bool:
  """Whether this host can read x's values: not a tracer, nor an array spread over hosts."""
  return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


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


def _check_labels(labels: Any, null_label: int) -> Array:
  """Validates labels at call time (before any trace) and makes them int32."""
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
  return labels.astype(jnp.int32)


def _check_weight(name: str, value: Any, batch: int) -> Array | None:
  """Validates a guidance weight (w or classifier_scale): None, a scalar or [B], finite."""
  if value is None:
    return None
  if not hasattr(value, "dtype"):
    value = np.asarray(value)
  if value.shape not in ((), (batch,)):
    raise ValueError(f"{name} must be a scalar or an array of shape [B]=({batch},), "
                     f"got shape {value.shape}.")
  if not jnp.issubdtype(value.dtype, jnp.number) or jnp.issubdtype(value.dtype,
                                                                  jnp.complexfloating):
    raise ValueError(f"{name} must be a real number, got dtype {value.dtype}.")
  if _is_concrete(value) and not np.all(np.isfinite(np.asarray(value))):
    raise ValueError(f"{name} must be finite, got {np.asarray(value).tolist()}.")
  return value.astype(jnp.float32)


def make_sample_fn(apply_fn: ApplyFn, *, shape: tuple[int, ...], num_steps: int,
                   null_label: int, v: float = 0.3, logsnr_min: float = -20.,
                   logsnr_max: float = 20., prediction: str = "eps",
                   sampler: str = "stochastic", clip_x: bool = False,
                   guidance_interval: tuple[float, float] | None = None,
                   return_trajectory: bool = False,
                   classifier_fn: guidance.ClassifierFn | None = None,
                   condition_model: bool = True) -> Callable[..., Any]:
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
    guidance_interval: (logsnr_lo, logsnr_hi); guidance (classifier-free and classifier)
      only at steps whose λ lies in it, one unguided pass per step elsewhere. None guides
      every step.
    return_trajectory: also return z after every step, [T, B, *shape] (the last is x).
    classifier_fn: `classifier_fn(classifier_params, z, logsnr) -> logits` of a noisy
      classifier p_φ(c | z_λ, λ), for classifier guidance (the mean shift for the
      stochastic sampler, the score form for DDIM). Combines with w.
    condition_model: False runs the network on ∅ only (an unconditional model, or the
      null label of a joint one), so that the labels steer only the classifier.

  Returns:
    `sample_fn(params, rng, labels, w=None, *, classifier_params=None,
    classifier_scale=None) -> x` ([B, *shape] float32), or `(x, trajectory)`.
    labels: int [B]; w and classifier_scale: None, a float, a scalar or a [B] array.
    `sample_fn.lower` lowers the jitted core with the same arguments (AOT compilation,
    cost analysis). `sample_fn.loop` takes the same arguments and computes the same x
    with a Python loop over a jitted step, one dispatch per step: slower, but the place
    to inspect or stream each step.
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

  def network(params, z, logsnr, labels, w, guide):
    """The network output, classifier-free guided when w is given and the step is guided."""
    model_labels = labels if condition_model else jnp.full_like(labels, null_label)
    unguided = lambda: apply_fn(params, z, logsnr, model_labels).astype(jnp.float32)
    if w is None:
      return unguided()
    guided_fn = lambda: guidance.classifier_free(apply_fn, params, z, logsnr, labels, w,
                                                 null_label).astype(jnp.float32)
    return guided_fn() if guidance_interval is None else jax.lax.cond(guide, guided_fn, unguided)

  def step_fn(params, classifier, labels, w, rng, z, i, logsnr_t, logsnr_s, guide):
    """One reverse step z_t -> z_{t+1}; the last step returns x̃."""
    logsnr = jnp.full((z.shape[0],), logsnr_t)
    x, eps = diffusion.to_x_eps(z, network(params, z, logsnr, labels, w, guide), logsnr,
                                prediction=prediction)
    g = None
    if classifier is not None:
      classifier_params, scale = classifier
      scale = jnp.where(guide, scale, 0.)
      g = guidance.classifier_grad(classifier_fn, classifier_params, z, logsnr, labels, scale)
      if sampler == "ddim":  # score form: ε̃ = ε - σ g
        eps = eps - diffusion._bcast(schedules.alpha_sigma(logsnr)[1], z) * g
        x = diffusion.x_from_eps(z, eps, logsnr)
    if clip_x:
      x = jnp.clip(x, -1., 1.)
      eps = diffusion.eps_from_x(z, x, logsnr)
    if sampler == "ddim":
      alpha_s, sigma_s = schedules.alpha_sigma(logsnr_s)
      z_next = alpha_s * x + sigma_s * eps
    else:
      mean = diffusion.posterior_mean(z, x, logsnr_t, logsnr_s)
      var = jnp.exp(diffusion.reverse_log_var(logsnr_t, logsnr_s, v))
      if g is not None:  # condition_mean: shift by (reverse variance) · g
        mean = mean + var * g
      z_next = mean + jnp.sqrt(var) * jax.random.normal(jax.random.fold_in(rng, i), z.shape)
    return jnp.where(i == num_steps - 1, x, z_next)

  def init(rng, labels):
    """z_1 ~ N(0, I) and the key of the steps' noise."""
    rng_init, rng_steps = jax.random.split(rng)
    return jax.random.normal(rng_init, (labels.shape[0],) + shape, jnp.float32), rng_steps

  def step(params, labels, w, classifier, rng_steps, z, i):
    """Step i (traced) of the T steps."""
    logsnr_t, logsnr_s, guide = (jnp.asarray(a)[i] for a in (logsnrs, logsnrs_next, guided))
    return step_fn(params, classifier, labels, w, rng_steps, z, i, logsnr_t, logsnr_s, guide)

  def sample(params, rng, labels, w, classifier):
    z, rng_steps = init(rng, labels)

    def body(z, i):
      z_next = step(params, labels, w, classifier, rng_steps, z, i)
      return z_next, (z_next if return_trajectory else None)

    x, trajectory = jax.lax.scan(body, z, jnp.arange(num_steps))
    return (x, trajectory) if return_trajectory else x

  jitted = xla_options.jit(sample)

  def check(labels, w, classifier_params, classifier_scale):
    labels = _check_labels(labels, null_label)
    w = _check_weight("w", w, labels.shape[0])
    if w is not None and not condition_model:
      raise ValueError("w (classifier-free guidance) needs a conditional model; this sampler "
                       "was made with condition_model=False.")
    scale = _check_weight("classifier_scale", classifier_scale, labels.shape[0])
    if classifier_fn is None:
      if classifier_params is not None or scale is not None:
        raise ValueError("classifier_params/classifier_scale need make_sample_fn(..., "
                         "classifier_fn=...).")
      return labels, w, None
    if scale is None:
      raise ValueError("This sampler does classifier guidance: pass classifier_scale (and "
                       "the classifier_params of classifier_fn).")
    return labels, w, (classifier_params, scale)

  def sample_fn(params, rng, labels, w=None, *, classifier_params=None, classifier_scale=None):
    return jitted(params, rng, *check(labels, w, classifier_params, classifier_scale))

  def lower(params, rng, labels, w=None, *, classifier_params=None, classifier_scale=None):
    return jitted.lower(params, rng, *check(labels, w, classifier_params, classifier_scale))

  jitted_init = xla_options.jit(init)
  # z is donated: each step overwrites the last one's buffer (unless all are returned).
  jitted_step = xla_options.jit(step, donate_argnums=() if return_trajectory else (5,))

  def loop(params, rng, labels, w=None, *, classifier_params=None, classifier_scale=None):
    checked = check(labels, w, classifier_params, classifier_scale)
    z, rng_steps = jitted_init(rng, checked[0])
    trajectory = []
    for i in range(num_steps):
      z = jitted_step(params, *checked, rng_steps, z, i)
      if return_trajectory:
        trajectory.append(z)
    return (z, jnp.stack(trajectory)) if return_trajectory else z

  sample_fn.lower = lower
  sample_fn.loop = loop
  return sample_fn
