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

`make_student_sample_fn` is the sampler of a guided-distillation student (Meng et al.),
a network that takes w as an input: the same call, one pass per deterministic step.

The combination is taken on the network output in its own parameterization: ε, x and v
are affine in each other with the same z, so mixing any of them is the paper's mix of ε.
"""
from __future__ import annotations

import dataclasses
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
  schedules.check_logsnr_range(logsnr_min, logsnr_max)
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


@dataclasses.dataclass(frozen=True)
class StepOptions:
  """What `make_sample_fn` fixes for every reverse step (see its arguments)."""
  apply_fn: ApplyFn
  null_label: int
  v: float
  prediction: str
  sampler: str
  clip_x: bool
  condition_model: bool
  classifier_fn: guidance.ClassifierFn | None
  guidance_interval: tuple[float, float] | None
  w_input: bool = False  # apply_fn(params, z, logsnr, labels, w): w is the network's input


def network_output(opts: StepOptions, params: Any, z: Array, logsnr: Array, labels: Array,
                   w: Array | None, guide: Array) -> Array:
  """The network output, classifier-free guided when w is given and the step is guided.

  With a guidance interval, `guide` (a traced bool) picks the guided or the single pass.
  """
  model_labels = labels if opts.condition_model else jnp.full_like(labels, opts.null_label)
  if opts.w_input:
    return opts.apply_fn(params, z, logsnr, labels, jnp.broadcast_to(w, logsnr.shape)
                         ).astype(jnp.float32)
  unguided = lambda: opts.apply_fn(params, z, logsnr, model_labels).astype(jnp.float32)
  if w is None:
    return unguided()
  guided = lambda: guidance.classifier_free(opts.apply_fn, params, z, logsnr, labels, w,
                                            opts.null_label).astype(jnp.float32)
  return guided() if opts.guidance_interval is None else jax.lax.cond(guide, guided, unguided)


def classifier_score(z: Array, eps: Array, logsnr: Array, g: Array) -> tuple[Array, Array]:
  """condition_score: ε̃ = ε - σ_λ g and the x̃ it implies (the deterministic sampler's
  classifier guidance)."""
  eps = eps - diffusion.expand_to(schedules.alpha_sigma(logsnr)[1], z) * g
  return diffusion.x_from_eps(z, eps, logsnr), eps


def clipped(z: Array, x: Array, logsnr: Array) -> tuple[Array, Array]:
  """x̃ clipped to [-1, 1] and the ε̃ it implies."""
  x = jnp.clip(x, -1., 1.)
  return x, diffusion.eps_from_x(z, x, logsnr)


def ddim_step(x: Array, eps: Array, logsnr_next: Array) -> Array:
  """The deterministic (probability-flow) step z' = α_λ' x̃ + σ_λ' ε̃."""
  alpha_next, sigma_next = schedules.alpha_sigma(logsnr_next)
  return alpha_next * x + sigma_next * eps


def stochastic_step(rng: Array, z: Array, x: Array, logsnr: Array, logsnr_next: Array,
                    v: float, mean_shift: Array | None = None) -> Array:
  """The paper's step z' ~ N(μ̃_{λ'|λ}(z, x̃) + var · g, var), var = (σ̃²)^{1-v} (σ²_{λ|λ'})^v.

  `mean_shift` is the classifier gradient g (condition_mean), or None.
  """
  mean = diffusion.posterior_mean(z, x, logsnr, logsnr_next)
  var = diffusion.reverse_var(logsnr, logsnr_next, v)
  if mean_shift is not None:
    mean = mean + var * mean_shift
  return mean + jnp.sqrt(var) * jax.random.normal(rng, z.shape)


def reverse_step(opts: StepOptions, params: Any, classifier: tuple[Any, Array] | None,
                 labels: Array, w: Array | None, rng: Array, z: Array, logsnr: Array,
                 logsnr_next: Array, guide: Array, last: Array) -> Array:
  """One step z_λ -> z_λ' of Algorithm 2 (λ, λ' scalars); the last step returns x̃.

  `classifier` is (classifier_params, scale) for classifier guidance, else None; `rng`
  is this step's key; `guide` says whether the step is inside the guidance interval.
  """
  logsnr_batch = jnp.full((z.shape[0],), logsnr)
  out = network_output(opts, params, z, logsnr_batch, labels, w, guide)
  x, eps = diffusion.to_x_eps(z, out, logsnr_batch, prediction=opts.prediction)
  g = None
  if classifier is not None:
    classifier_params, scale = classifier
    g = guidance.classifier_grad(opts.classifier_fn, classifier_params, z, logsnr_batch,
                                 labels, jnp.where(guide, scale, 0.))
    if opts.sampler == "ddim":
      x, eps = classifier_score(z, eps, logsnr_batch, g)
  if opts.clip_x:
    x, eps = clipped(z, x, logsnr_batch)
  if opts.sampler == "ddim":
    z_next = ddim_step(x, eps, logsnr_next)
  else:
    z_next = stochastic_step(rng, z, x, logsnr, logsnr_next, opts.v, g)
  return jnp.where(last, x, z_next)


class SampleFn:
  """The sampler that `make_sample_fn` returns: T reverse steps from z_1 ~ N(0, I).

  A call runs the steps as one `lax.scan` inside one jit; `lower` lowers that program;
  `loop` runs the same steps as a Python loop over a jitted step. All three validate
  their arguments first, before anything is traced.
  """

  def __init__(self, opts: StepOptions, *, shape: tuple[int, ...], logsnrs: np.ndarray,
               logsnrs_next: np.ndarray, return_trajectory: bool):
    """Step i goes from logsnrs[i] to logsnrs_next[i]; the last one returns x̃."""
    self.opts, self.shape, self.num_steps = opts, shape, len(logsnrs)
    self.return_trajectory = return_trajectory
    self.logsnrs = np.asarray(logsnrs, np.float32)
    self.logsnrs_next = np.asarray(logsnrs_next, np.float32)
    interval = opts.guidance_interval
    self.guided = (np.ones(self.num_steps, bool) if interval is None else
                   (self.logsnrs >= interval[0]) & (self.logsnrs <= interval[1]))
    self._scan = xla_options.jit(self._sample)
    self._init_jit = xla_options.jit(self._init)
    # z is donated: each step overwrites the last one's buffer (unless all are returned).
    self._step_jit = xla_options.jit(self._step,
                                     donate_argnums=() if return_trajectory else (5,))

  def _init(self, rng: Array, labels: Array) -> tuple[Array, Array]:
    """z_1 ~ N(0, I) and the key of the steps' noise."""
    rng_init, rng_steps = jax.random.split(rng)
    return jax.random.normal(rng_init, (labels.shape[0],) + self.shape, jnp.float32), rng_steps

  def _step(self, params, labels, w, classifier, rng_steps, z, i):
    """Step i (traced) of the T steps."""
    logsnr, logsnr_next, guide = (jnp.asarray(a)[i]
                                  for a in (self.logsnrs, self.logsnrs_next, self.guided))
    return reverse_step(self.opts, params, classifier, labels, w,
                        jax.random.fold_in(rng_steps, i), z, logsnr, logsnr_next, guide,
                        i == self.num_steps - 1)

  def _sample(self, params, rng, labels, w, classifier):
    z, rng_steps = self._init(rng, labels)

    def body(z, i):
      z_next = self._step(params, labels, w, classifier, rng_steps, z, i)
      return z_next, (z_next if self.return_trajectory else None)

    x, trajectory = jax.lax.scan(body, z, jnp.arange(self.num_steps))
    return (x, trajectory) if self.return_trajectory else x

  def _check(self, labels, w, classifier_params, classifier_scale):
    """(labels, w, classifier) validated, or ValueError naming the argument."""
    opts = self.opts
    labels = _check_labels(labels, opts.null_label)
    w = _check_weight("w", w, labels.shape[0])
    if w is None and opts.w_input:
      raise ValueError("w is an input of this student network: pass w, a float or a [B] array.")
    if w is not None and not opts.condition_model:
      raise ValueError("w (classifier-free guidance) needs a conditional model; this sampler "
                       "was made with condition_model=False.")
    scale = _check_weight("classifier_scale", classifier_scale, labels.shape[0])
    if opts.classifier_fn is None:
      if classifier_params is not None or scale is not None:
        raise ValueError("classifier_params/classifier_scale need make_sample_fn(..., "
                         "classifier_fn=...).")
      return labels, w, None
    if scale is None:
      raise ValueError("This sampler does classifier guidance: pass classifier_scale (and "
                       "the classifier_params of classifier_fn).")
    return labels, w, (classifier_params, scale)

  def __call__(self, params, rng, labels, w=None, *, classifier_params=None,
               classifier_scale=None):
    return self._scan(params, rng, *self._check(labels, w, classifier_params, classifier_scale))

  def lower(self, params, rng, labels, w=None, *, classifier_params=None, classifier_scale=None):
    return self._scan.lower(params, rng,
                            *self._check(labels, w, classifier_params, classifier_scale))

  def loop(self, params, rng, labels, w=None, *, classifier_params=None, classifier_scale=None):
    checked = self._check(labels, w, classifier_params, classifier_scale)
    z, rng_steps = self._init_jit(rng, checked[0])
    trajectory = []
    for i in range(self.num_steps):
      z = self._step_jit(params, *checked, rng_steps, z, i)
      if self.return_trajectory:
        trajectory.append(z)
    return (z, jnp.stack(trajectory)) if self.return_trajectory else z


def make_sample_fn(apply_fn: ApplyFn, *, shape: tuple[int, ...], num_steps: int,
                   null_label: int, v: float = 0.3, logsnr_min: float = -20.,
                   logsnr_max: float = 20., prediction: str = "eps",
                   sampler: str = "stochastic", clip_x: bool = False,
                   guidance_interval: tuple[float, float] | None = None,
                   return_trajectory: bool = False,
                   classifier_fn: guidance.ClassifierFn | None = None,
                   condition_model: bool = True) -> SampleFn:
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
    `sample_fn.lower` lowers the jitted scan with the same arguments (AOT compilation,
    cost analysis). `sample_fn.loop` takes the same arguments and computes the same x
    with a Python loop over a jitted step, one dispatch per step: slower, but the place
    to inspect or stream each step.

  Each step is `reverse_step`; the functions it calls (`network_output`,
  `classifier_score`, `clipped`, `ddim_step`, `stochastic_step`) are the pieces of
  Algorithm 2 and of classifier guidance, each usable alone.
  """
  _check_options(shape=shape, num_steps=num_steps, null_label=null_label, v=v,
                 logsnr_min=logsnr_min, logsnr_max=logsnr_max, prediction=prediction,
                 sampler=sampler, guidance_interval=guidance_interval)
  opts = StepOptions(apply_fn=apply_fn, null_label=int(null_label), v=v, prediction=prediction,
                     sampler=sampler, clip_x=clip_x, condition_model=condition_model,
                     classifier_fn=classifier_fn, guidance_interval=guidance_interval)
  logsnrs = np.asarray(schedules.sampling_logsnrs(num_steps, logsnr_min=logsnr_min,
                                                  logsnr_max=logsnr_max))
  # The last step returns x̃; its "next" λ only keeps the unused branch finite.
  logsnrs_next = np.append(logsnrs[1:], logsnrs[-1] + 1.)
  return SampleFn(opts, shape=tuple(int(d) for d in shape), logsnrs=logsnrs,
                  logsnrs_next=logsnrs_next, return_trajectory=return_trajectory)


def make_student_sample_fn(apply_fn: Callable[..., Array], *, shape: tuple[int, ...],
                           num_steps: int, null_label: int, logsnr_min: float = -20.,
                           logsnr_max: float = 20., prediction: str = "v",
                           clip_x: bool = False, return_trajectory: bool = False) -> SampleFn:
  """The sampler of a guided-distillation student: `sample_fn(params, rng, labels, w)`.

  `apply_fn(params, z, logsnr, labels, w) -> out` takes the guidance weight w (float [B])
  as an input (`models.make_apply_fn` of a network with w_emb_ch > 0). The N = num_steps
  deterministic (DDIM) steps go along `schedules.halving_logsnrs(N)`, one network pass
  each, from z_1 ~ N(0, I) at λ_min; the last returns x̃. w is required: a float, a
  scalar or a [B] array, validated as `make_sample_fn`'s; so are the other arguments.
  `sample_fn.lower` and `sample_fn.loop` are as for `make_sample_fn`.
  """
  _check_options(shape=shape, num_steps=num_steps, null_label=null_label, v=0.,
                 logsnr_min=logsnr_min, logsnr_max=logsnr_max, prediction=prediction,
                 sampler="ddim", guidance_interval=None)
  opts = StepOptions(apply_fn=apply_fn, null_label=int(null_label), v=0., prediction=prediction,
                     sampler="ddim", clip_x=clip_x, condition_model=True, classifier_fn=None,
                     guidance_interval=None, w_input=True)
  logsnrs = np.asarray(schedules.halving_logsnrs(num_steps, logsnr_min=logsnr_min,
                                                 logsnr_max=logsnr_max))
  return SampleFn(opts, shape=tuple(int(d) for d in shape), logsnrs=logsnrs[:-1],
                  logsnrs_next=logsnrs[1:], return_trajectory=return_trajectory)
