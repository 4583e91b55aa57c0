"""Algorithm 2 of Ho & Salimans: guided sampling as one jitted `lax.scan`.

    from cfg_jax.sampling import make_sample_fn
    sample_fn = make_sample_fn(apply_fn, shape=(32, 32, 1), num_steps=256, null_label=10)
    x = sample_fn(params, rng, labels, w)

`apply_fn(params, z, logsnr, labels) -> out` with z [B, *shape], logsnr float32 [B] and
labels int32 [B]; `out` is the network's ε (or x or v, see `prediction`).

`w` is the paper's guidance weight: ε̃ = (1 + w) ε_θ(z, c) - w ε_θ(z, ∅). The common
"guidance scale" is s = 1 + w, so w = 0 is plain conditional sampling and w = -1 is
unconditional. Each guided step evaluates the conditional and unconditional network in
ONE forward pass on the doubled batch [z; z] with labels [c; ∅], and a guidance rule
(`cfg_jax.guidance`: the paper's by default) mixes the two; a rule may carry a state
through the scan. `w=None` skips guidance altogether: one pass per step on the labels as
given.

The sampler's options are those of a run's `config.sampling` (`OPTION_RULES` and
`guidance_params`), by the same names, so a config passes to `make_sample_fn` whole
(`spec_options`).

`make_student_sample_fn` is the sampler of a guided-distillation student (Meng et al.),
a network that takes w as an input: the same call, one pass per deterministic step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax import checks
from cfg_jax import diffusion
from cfg_jax import guidance as guidance_lib
from cfg_jax import schedules
from cfg_jax import xla_options
from cfg_jax.guidance import passes

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array, Array], Array]
SAMPLERS = ("stochastic", "ddim")


def _is_interval(x: Any) -> bool:
  return isinstance(x, (tuple, list)) and (len(x) == 0 or (
      len(x) == 2 and all(checks.is_real(b) for b in x) and x[0] <= x[1]))


# The sampler's options, as config.sampling holds them, with what each allows; with
# `guidance_params` (each rule's own, guidance.PARAM_RULES) they are OPTIONS.
OPTION_RULES: dict[str, checks.Check] = {
    "num_steps": checks.int_at_least(1),
    "v": checks.real_in(0, 1),
    "sampler": checks.one_of(*SAMPLERS),
    "clip_x": checks.BOOL,
    "guidance": ((lambda x: x in guidance_lib.RULES), f"one of {tuple(guidance_lib.RULES)}"),
    "w_schedule": checks.one_of(*guidance_lib.W_SCHEDULES),
    "guidance_interval": (_is_interval, "() to guide every step, or (logsnr_lo, logsnr_hi) "
                                        "with lo <= hi"),
}
OPTIONS = (*OPTION_RULES, "guidance_params")


def spec_options(spec: Any) -> dict[str, Any]:
  """The OPTIONS of a sampling spec (a run's config.sampling, or a mapping with those
  fields) as `make_sample_fn`'s keywords of the same names."""
  options = {name: spec[name] for name in OPTIONS}
  options["guidance_interval"] = tuple(options["guidance_interval"])
  params = options["guidance_params"]
  options["guidance_params"] = dict(params.to_dict() if hasattr(params, "to_dict") else params)
  return options


def check_options(*, num_steps: Any, v: Any, sampler: Any, clip_x: Any, guidance: Any,
                  guidance_params: Mapping[str, Any] | None, w_schedule: Any,
                  guidance_interval: Any, prefix: str = "") -> Any:
  """The guidance rule of these sampler options, or ValueError naming the first bad one
  (prefixed by `prefix`, e.g. "config.sampling."); `guidance` may be a rule object."""
  values = dict(num_steps=num_steps, v=v, sampler=sampler, clip_x=clip_x,
                w_schedule=w_schedule, guidance_interval=guidance_interval)
  if isinstance(guidance, str):
    values["guidance"] = guidance
  for name, value in values.items():
    checks.check(prefix + name, value, OPTION_RULES[name])
  rule = guidance_lib.make_rule(guidance, guidance_params)
  check_sampler = getattr(rule, "check_sampler", None)
  if check_sampler is not None:
    check_sampler(sampler, prefix=prefix)
  return rule


def _guidance_rule(guidance_: Any, params: Mapping[str, Any] | None) -> Any:
  return guidance_lib.make_rule(guidance_, params)


def _is_concrete(x: Any) -> bool:
  """Whether this host can read x's values: not a tracer, nor an array spread over hosts."""
  return not isinstance(x, jax.core.Tracer) and getattr(x, "is_fully_addressable", True)


def _check_network(*, shape, null_label, logsnr_min, logsnr_max, prediction) -> None:
  """Rejects bad network and schedule arguments with a message naming the argument."""
  if not (isinstance(shape, tuple) and shape
          and all(isinstance(d, (int, np.integer)) and d > 0 for d in shape)):
    raise ValueError(f"shape must be a non-empty tuple of positive ints (the per-example "
                     f"shape, e.g. (2,) or (32, 32, 1)), got {shape!r}.")
  if not isinstance(null_label, (int, np.integer)) or null_label < 0:
    raise ValueError(f"null_label must be an int >= 0 (num_classes), got {null_label!r}.")
  schedules.check_logsnr_range(logsnr_min, logsnr_max)
  diffusion.check_prediction(prediction)


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


def _check_rule(rule: Any, shape: tuple[int, ...], prediction: str) -> bool:
  """Traces `rule` abstractly on one example (nothing is compiled): ValueError unless it
  returns (Guided, state) with the state's structure kept. Returns whether it re-noises
  with its own ε (Guided.eps_next)."""
  z = jax.ShapeDtypeStruct((1, *shape), jnp.float32)

  def one_step(z):
    state = rule.init(z)
    batch = jnp.zeros((1,), jnp.float32)
    out, new_state = rule(guidance_lib.Inputs(z, z, z, batch, batch, jnp.int32(0), prediction),
                          state)
    return out, state, new_state

  try:
    out, state, new_state = jax.eval_shape(one_step, z)
  except (TypeError, ValueError) as e:
    raise ValueError(f"guidance rule {rule!r} fails on one step: {e}") from e
  if not isinstance(out, guidance_lib.Guided):
    raise ValueError(f"guidance rule {rule!r} must return (cfg_jax.guidance.Guided, state), got "
                     f"{type(out).__name__} first.")
  if jax.tree.structure(state) != jax.tree.structure(new_state) or any(
      (a.shape, a.dtype) != (b.shape, b.dtype)
      for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(new_state))):
    raise ValueError(f"guidance rule {rule!r} must return a state of the structure, shapes "
                     f"and dtypes that init(z) gives (it is carried through lax.scan).")
  return out.eps_next is not None


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
  classifier_fn: guidance_lib.ClassifierFn | None
  rule: Any = guidance_lib.CFG()
  renoises: bool = False      # the rule re-noises with its own ε (Guided.eps_next)
  guide_fn: ApplyFn | None = None  # autoguidance: the second pass is this network on c
  w_input: bool = False  # apply_fn(params, z, logsnr, labels, w): w is the network's input

  @property
  def guide_batched(self) -> bool:
    """Whether the guide is the same architecture, run in one call with the network."""
    return self.guide_fn is self.apply_fn


class Call(NamedTuple):
  """A call's validated arguments: the network's params (and, for autoguidance, the
  guide's, and both stacked when they share an architecture), labels, w, and the
  classifier's (params, scale) or None."""
  params: Any
  labels: Array
  w: Array | None
  classifier: tuple[Any, Array] | None = None
  guide_params: Any = None
  stacked_params: Any = None


class At(NamedTuple):
  """Where a step is: its index (0 at λ_min), λ and λ' (scalars), whether it is guided
  (inside the guidance interval), the w schedule's factor, whether it is the last."""
  step: Array
  logsnr: Array
  logsnr_next: Array
  guided: Any
  w_scale: Array
  last: Array


def guided_outputs(opts: StepOptions, call: Call, z: Array, logsnr: Array
                   ) -> tuple[Array, Array]:
  """(out(z, c), out(z, ∅)) in one pass on the doubled batch, or with a guide network
  (autoguidance) its out(z, c) in place of out(z, ∅); float32."""
  if opts.guide_fn is None:
    pair = passes.cond_and_null(opts.apply_fn, call.params, z, logsnr, call.labels,
                                opts.null_label)
  elif opts.guide_batched:
    pair = passes.cond_and_guide_stacked(opts.apply_fn, call.stacked_params, z, logsnr,
                                         call.labels)
  else:
    pair = passes.cond_and_guide(opts.apply_fn, call.params, opts.guide_fn, call.guide_params,
                                 z, logsnr, call.labels)
  return tuple(out.astype(jnp.float32) for out in pair)


def network_output(opts: StepOptions, call: Call, z: Array, state: Any, *, at: At
                   ) -> tuple[guidance_lib.Guided, Any]:
  """The step's (x̃, ε̃), guided by the rule when w is given and the step is guided, and
  the rule's new state. `at.guided` is True (static) or a traced bool that picks the
  guided or the single pass."""
  logsnr = jnp.full((z.shape[0],), at.logsnr)
  if opts.w_input:
    out = opts.apply_fn(call.params, z, logsnr, call.labels,
                        jnp.broadcast_to(call.w, logsnr.shape)).astype(jnp.float32)
    x, eps = diffusion.to_x_eps(z, out, logsnr, prediction=opts.prediction)
    return guidance_lib.Guided(x, eps), state

  def unguided():
    labels = call.labels if opts.condition_model else jnp.full_like(call.labels, opts.null_label)
    out = opts.apply_fn(call.params, z, logsnr, labels).astype(jnp.float32)
    x, eps = diffusion.to_x_eps(z, out, logsnr, prediction=opts.prediction)
    return guidance_lib.Guided(x, eps, eps if opts.renoises else None), state

  if call.w is None:
    return unguided()

  def guided():
    cond, uncond = guided_outputs(opts, call, z, logsnr)
    return opts.rule(guidance_lib.Inputs(cond, uncond, z, logsnr, call.w * at.w_scale,
                                         at.step, opts.prediction), state)

  return guided() if at.guided is True else jax.lax.cond(at.guided, guided, unguided)


def classifier_score(z: Array, eps: Array, logsnr: Array, g: Array) -> tuple[Array, Array]:
  """condition_score: ε̃ = ε - σ_λ g and the x̃ it implies (the deterministic sampler's
  classifier guidance)."""
  eps = eps - diffusion.expand_to(schedules.alpha_sigma(logsnr)[1], z) * g
  return diffusion.x_from_eps(z, eps, logsnr), eps


def clipped(z: Array, x: Array, logsnr: Array) -> tuple[Array, Array]:
  """x̃ clipped to [-1, 1] and the ε̃ it implies."""
  x = jnp.clip(x, -1., 1.)
  return x, diffusion.eps_from_x(z, x, logsnr)


def ddim_step(x: Array, eps: Array, *, logsnr_next: Array) -> Array:
  """The deterministic (probability-flow) step z' = α_λ' x̃ + σ_λ' ε̃."""
  alpha_next, sigma_next = schedules.alpha_sigma(logsnr_next)
  return alpha_next * x + sigma_next * eps


def stochastic_step(rng: Array, z: Array, x: Array, *, logsnr: Array, logsnr_next: Array,
                    v: float, mean_shift: Array | None = None) -> Array:
  """The paper's step z' ~ N(μ̃_{λ'|λ}(z, x̃) + var · g, var), var = (σ̃²)^{1-v} (σ²_{λ|λ'})^v.

  `mean_shift` is the classifier gradient g (condition_mean), or None.
  """
  mean = diffusion.posterior_mean(z, x, logsnr, logsnr_next)
  var = diffusion.reverse_var(logsnr, logsnr_next, v)
  if mean_shift is not None:
    mean = mean + var * mean_shift
  return mean + jnp.sqrt(var) * jax.random.normal(rng, z.shape)


def reverse_step(opts: StepOptions, call: Call, rng: Array, z: Array, state: Any, *, at: At
                 ) -> tuple[Array, Any]:
  """One step z_λ -> z_λ' of Algorithm 2 and the rule's new state; the last step returns
  x̃. `rng` is this step's key."""
  logsnr = jnp.full((z.shape[0],), at.logsnr)
  (x, eps, eps_next), state = network_output(opts, call, z, state, at=at)
  g = None
  if call.classifier is not None:
    classifier_params, scale = call.classifier
    g = guidance_lib.classifier_grad(opts.classifier_fn, classifier_params, z, logsnr, call.labels,
                                 jnp.where(at.guided, scale, 0.))
    if opts.sampler == "ddim":
      if eps_next is not None:
        eps_next = classifier_score(z, eps_next, logsnr, g)[1]
      x, eps = classifier_score(z, eps, logsnr, g)
  if opts.clip_x:
    x, eps = clipped(z, x, logsnr)
  if opts.sampler == "ddim":
    z_next = ddim_step(x, eps if eps_next is None else eps_next, logsnr_next=at.logsnr_next)
  else:
    z_next = stochastic_step(rng, z, x, logsnr=at.logsnr, logsnr_next=at.logsnr_next, v=opts.v,
                             mean_shift=g)
  return jnp.where(at.last, x, z_next), state


class SampleFn:
  """The sampler that `make_sample_fn` returns: T reverse steps from z_1 ~ N(0, I).

  A call runs the steps as one `lax.scan` inside one jit; `lower` lowers that program;
  `loop` runs the same steps as a Python loop over a jitted step. All three validate
  their arguments first, before anything is traced.
  """

  def __init__(self, opts: StepOptions, *, shape: tuple[int, ...], logsnrs: np.ndarray,
               logsnrs_next: np.ndarray, guided: np.ndarray, w_scales: np.ndarray,
               return_trajectory: bool):
    """Step i goes from logsnrs[i] to logsnrs_next[i], guided where `guided[i]` with w
    scaled by w_scales[i]; the last one returns x̃."""
    self.opts, self.shape, self.num_steps = opts, shape, len(logsnrs)
    self.return_trajectory = return_trajectory
    self.logsnrs = np.asarray(logsnrs, np.float32)
    self.logsnrs_next = np.asarray(logsnrs_next, np.float32)
    self.guided = np.asarray(guided, bool)
    self.w_scales = np.asarray(w_scales, np.float32)
    self._scan = xla_options.jit(self._sample)
    self._init_jit = xla_options.jit(self._init)
    self._stack_jit = xla_options.jit(self._with_stacked_params)
    # z is donated: each step overwrites the last one's buffer (unless all are returned).
    self._step_jit = xla_options.jit(self._step,
                                     donate_argnums=() if return_trajectory else (2,))

  def _init(self, rng: Array, labels: Array) -> tuple[Array, Array, Any]:
    """z_1 ~ N(0, I), the key of the steps' noise and the rule's first state."""
    rng_init, rng_steps = jax.random.split(rng)
    z = jax.random.normal(rng_init, (labels.shape[0],) + self.shape, jnp.float32)
    return z, rng_steps, self.opts.rule.init(z)

  def _with_stacked_params(self, call: Call) -> Call:
    """The call with the network's and the guide's params stacked, when one call runs both."""
    if not self.opts.guide_batched or call.w is None:
      return call
    return call._replace(stacked_params=passes.stack_params(call.params, call.guide_params))

  def _at(self, i: Array) -> At:
    guided = True if self.guided.all() else jnp.asarray(self.guided)[i]
    logsnr, logsnr_next, w_scale = (jnp.asarray(a)[i] for a in
                                    (self.logsnrs, self.logsnrs_next, self.w_scales))
    return At(i, logsnr, logsnr_next, guided, w_scale, i == self.num_steps - 1)

  def _step(self, call: Call, rng_steps: Array, z: Array, state: Any, i: Array
            ) -> tuple[Array, Any]:
    """Step i (traced) of the T steps."""
    return reverse_step(self.opts, call, jax.random.fold_in(rng_steps, i), z, state,
                        at=self._at(i))

  def _sample(self, rng: Array, call: Call):
    z, rng_steps, state = self._init(rng, call.labels)
    call = self._with_stacked_params(call)

    def body(carry, i):
      z_next, state = self._step(call, rng_steps, *carry, i)
      return (z_next, state), (z_next if self.return_trajectory else None)

    (x, _), trajectory = jax.lax.scan(body, (z, state), jnp.arange(self.num_steps))
    return (x, trajectory) if self.return_trajectory else x

  def _check(self, params, labels, w, classifier_params, classifier_scale, guide_params
             ) -> Call:
    """The call's arguments validated, or ValueError naming the argument."""
    opts = self.opts
    labels = _check_labels(labels, opts.null_label)
    w = _check_weight("w", w, labels.shape[0])
    if w is None and opts.w_input:
      raise ValueError("w is an input of this student network: pass w, a float or a [B] array.")
    if w is not None and not opts.condition_model:
      raise ValueError("w (classifier-free guidance) needs a conditional model; this sampler "
                       "was made with condition_model=False.")
    _check_guide_params(opts, params, guide_params)
    scale = _check_weight("classifier_scale", classifier_scale, labels.shape[0])
    call = Call(params, labels, w, guide_params=guide_params)
    if opts.classifier_fn is None:
      if classifier_params is not None or scale is not None:
        raise ValueError("classifier_params/classifier_scale need make_sample_fn(..., "
                         "classifier_fn=...).")
      return call
    if scale is None:
      raise ValueError("This sampler does classifier guidance: pass classifier_scale (and "
                       "the classifier_params of classifier_fn).")
    return call._replace(classifier=(classifier_params, scale))

  def __call__(self, params, rng, labels, w=None, *, classifier_params=None,
               classifier_scale=None, guide_params=None):
    return self._scan(rng, self._check(params, labels, w, classifier_params, classifier_scale,
                                       guide_params))

  def lower(self, params, rng, labels, w=None, *, classifier_params=None, classifier_scale=None,
            guide_params=None):
    return self._scan.lower(rng, self._check(params, labels, w, classifier_params,
                                             classifier_scale, guide_params))

  def loop(self, params, rng, labels, w=None, *, classifier_params=None, classifier_scale=None,
           guide_params=None):
    call = self._check(params, labels, w, classifier_params, classifier_scale, guide_params)
    z, rng_steps, state = self._init_jit(rng, call.labels)
    call = self._stack_jit(call)
    trajectory = []
    for i in range(self.num_steps):
      z, state = self._step_jit(call, rng_steps, z, state, i)
      if self.return_trajectory:
        trajectory.append(z)
    return (z, jnp.stack(trajectory)) if self.return_trajectory else z


def _check_guide_params(opts: StepOptions, params: Any, guide_params: Any) -> None:
  """guide_params go with a guide network, and match params when it shares the network's
  architecture (one call runs both)."""
  if opts.guide_fn is None:
    if guide_params is not None:
      raise ValueError("guide_params need make_sample_fn(..., guide_fn=...) (autoguidance).")
    return
  if guide_params is None:
    raise ValueError("This sampler guides with a guide network (autoguidance): pass "
                     "guide_params, the params of guide_fn.")
  if opts.guide_batched:
    shapes = lambda tree: jax.tree.map(lambda a: (jnp.shape(a), jnp.result_type(a)), tree)
    if (jax.tree.structure(params) != jax.tree.structure(guide_params)
        or shapes(params) != shapes(guide_params)):
      raise ValueError("guide_params must have the structure, shapes and dtypes of params: "
                       "guide_fn is apply_fn, so one call runs both. For a guide of another "
                       "architecture pass its own apply_fn as guide_fn.")


def _logsnrs_next(logsnrs: np.ndarray) -> np.ndarray:
  """λ' of each step of the grid: the next λ; the last step returns x̃, and its λ' only
  keeps the unused branch finite."""
  return np.append(logsnrs[1:], logsnrs[-1] + 1.)


def make_sample_fn(apply_fn: ApplyFn, *, shape: tuple[int, ...], num_steps: int,
                   null_label: int, v: float = 0.3, logsnr_min: float = -20.,
                   logsnr_max: float = 20., prediction: str = "eps",
                   sampler: str = "stochastic", clip_x: bool = False,
                   guidance: str | Any = "cfg", guidance_params: Mapping[str, Any] | None = None,
                   w_schedule: str = "constant", guidance_interval: tuple[float, ...] = (),
                   return_trajectory: bool = False,
                   classifier_fn: guidance_lib.ClassifierFn | None = None,
                   condition_model: bool = True, guide_fn: ApplyFn | None = None) -> SampleFn:
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
    guidance: the rule that mixes the two outputs of a guided step: a name of
      `cfg_jax.guidance.RULES` ("cfg", the paper's, "rescale", "apg", "cfgpp",
      "cfg_zero_star") or a rule object (`cfg_jax.guidance.Rule`).
    guidance_params: the named rule's parameters by name (e.g. {"eta": 0.}); it may hold
      other rules' too, as config.sampling.guidance_params does.
    w_schedule: how w varies over the steps, "constant", "linear" or "cosine"
      (`cfg_jax.guidance.w_schedules`).
    guidance_interval: (logsnr_lo, logsnr_hi); guidance (classifier-free and classifier)
      only at steps whose λ lies in it, one unguided pass per step elsewhere. () guides
      every step.
    return_trajectory: also return z after every step, [T, B, *shape] (the last is x).
    classifier_fn: `classifier_fn(classifier_params, z, logsnr) -> logits` of a noisy
      classifier p_φ(c | z_λ, λ), for classifier guidance (the mean shift for the
      stochastic sampler, the score form for DDIM). Combines with w.
    condition_model: False runs the network on ∅ only (an unconditional model, or the
      null label of a joint one), so that the labels steer only the classifier.
    guide_fn: autoguidance (Karras et al. 2024): the second pass of a guided step is this
      weaker conditional network on (z, c), `guide_fn(guide_params, z, logsnr, labels)`,
      instead of the network on ∅. Pass `apply_fn` itself for a guide of the same
      architecture (an earlier checkpoint): both then run in one call.

  Returns:
    `sample_fn(params, rng, labels, w=None, *, classifier_params=None,
    classifier_scale=None, guide_params=None) -> x` ([B, *shape] float32), or
    `(x, trajectory)`. labels: int [B]; w and classifier_scale: None, a float, a scalar or
    a [B] array. `sample_fn.lower` lowers the jitted scan with the same arguments (AOT
    compilation, cost analysis). `sample_fn.loop` takes the same arguments and computes
    the same x with a Python loop over a jitted step, one dispatch per step: slower, but
    the place to inspect or stream each step.

  Each step is `reverse_step`; the functions it calls (`network_output`,
  `classifier_score`, `clipped`, `ddim_step`, `stochastic_step`) are the pieces of
  Algorithm 2 and of classifier guidance, each usable alone.
  """
  rule = check_options(num_steps=num_steps, v=v, sampler=sampler, clip_x=clip_x,
                       guidance=guidance, guidance_params=guidance_params,
                       w_schedule=w_schedule, guidance_interval=guidance_interval)
  _check_network(shape=shape, null_label=null_label, logsnr_min=logsnr_min,
                 logsnr_max=logsnr_max, prediction=prediction)
  shape = tuple(int(d) for d in shape)
  if guide_fn is not None and not condition_model:
    raise ValueError("guide_fn (autoguidance) guides a conditional model; this sampler was "
                     "made with condition_model=False.")
  opts = StepOptions(apply_fn=apply_fn, null_label=int(null_label), v=v, prediction=prediction,
                     sampler=sampler, clip_x=clip_x, condition_model=condition_model,
                     classifier_fn=classifier_fn, rule=rule,
                     renoises=_check_rule(rule, shape, prediction), guide_fn=guide_fn)
  logsnrs = np.asarray(schedules.sampling_logsnrs(num_steps, logsnr_min=logsnr_min,
                                                  logsnr_max=logsnr_max))
  guided = (np.ones(len(logsnrs), bool) if not guidance_interval else
            (logsnrs >= guidance_interval[0]) & (logsnrs <= guidance_interval[1]))
  w_scales = np.asarray(guidance_lib.w_scale(w_schedule, logsnrs, logsnr_min=logsnr_min,
                                         logsnr_max=logsnr_max))
  return SampleFn(opts, shape=shape, logsnrs=logsnrs, logsnrs_next=_logsnrs_next(logsnrs),
                  guided=guided, w_scales=w_scales, return_trajectory=return_trajectory)


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
  checks.check("num_steps", num_steps, OPTION_RULES["num_steps"])
  checks.check("clip_x", clip_x, OPTION_RULES["clip_x"])
  _check_network(shape=shape, null_label=null_label, logsnr_min=logsnr_min,
                 logsnr_max=logsnr_max, prediction=prediction)
  opts = StepOptions(apply_fn=apply_fn, null_label=int(null_label), v=0., prediction=prediction,
                     sampler="ddim", clip_x=clip_x, condition_model=True, classifier_fn=None,
                     w_input=True)
  logsnrs = np.asarray(schedules.halving_logsnrs(num_steps, logsnr_min=logsnr_min,
                                                 logsnr_max=logsnr_max))
  return SampleFn(opts, shape=tuple(int(d) for d in shape), logsnrs=logsnrs[:-1],
                  logsnrs_next=logsnrs[1:], guided=np.ones(num_steps, bool),
                  w_scales=np.ones(num_steps, np.float32), return_trajectory=return_trajectory)
