"""A trained run: restore it, build its sampler, sample in device batches, write outputs.

Shared by the generate and evaluate CLIs and by the training loop's sample grids. A
guided-distillation folder (`python -m cfg_jax.distill`) holds one run per phase,
stage1/ and steps_<N>/; `load_run` of the folder restores its last phase done.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Iterator, Mapping, Sequence

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import config_lib
from cfg_jax import ema_snapshots
from cfg_jax import extras
from cfg_jax import files
from cfg_jax import guidance
from cfg_jax import models
from cfg_jax import parallel
from cfg_jax import sampling
from cfg_jax import visualization


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run: its config, model and restored EMA params."""
  config: ml_collections.ConfigDict
  model: Any
  params: Any
  step: int


DISTILL_FILE = "distill.json"  # marks a guided-distillation folder: its teacher, its phases
STAGE1 = "stage1"


def phase_dir_name(num_steps: int) -> str:
  """The folder of the stage-2 round whose student samples in num_steps steps."""
  return f"steps_{num_steps}"


def distilled_rounds(workdir: epath.PathLike) -> list[tuple[int, epath.Path]]:
  """(steps, folder) of each stage-2 round of a distillation folder that has a checkpoint,
  from the most steps to the fewest."""
  rounds = [(int(m.group(1)), p) for p in epath.Path(workdir).iterdir()
            if (m := re.fullmatch(r"steps_(\d+)", p.name)) and _has_checkpoint(p)]
  return sorted(rounds, key=lambda r: -r[0])


def last_phase(workdir: epath.PathLike) -> epath.Path:
  """The phase of a distillation folder that was distilled furthest and has a checkpoint:
  the steps_<N> of the smallest N, else stage1."""
  workdir = epath.Path(workdir)
  rounds = distilled_rounds(workdir)
  if rounds:
    return rounds[-1][1]
  if _has_checkpoint(workdir / STAGE1):
    return workdir / STAGE1
  raise FileNotFoundError(f"--workdir={workdir} is a distillation with no checkpoint yet.")


def _has_checkpoint(workdir: epath.Path) -> bool:
  if not (workdir / "checkpoints").exists():
    return False
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    return checkpointer.latest_step() is not None
  finally:
    checkpointer.close()


def load_run(workdir: epath.PathLike, *, step: int | None = None,
             ema: str | None = None) -> Run:
  """Restores the config and EMA params of a training run, replicated.

  The newest checkpoint that restores, or `step` (see `Checkpointer.restore_newest`). With
  `ema` (`sigma_rel_<σ_rel>`, --ema), the params are that reconstructed power EMA
  (python -m cfg_jax.posthoc_ema), and `step` is one of its steps. A distillation folder
  stands for its `last_phase`. Everything is opened read-only: reading never disturbs a
  run that is training.
  """
  extras.check_path(workdir, flag="--workdir")
  if (epath.Path(workdir) / DISTILL_FILE).exists():
    workdir = last_phase(workdir)
  config = config_files.load_config(workdir)
  config_lib.validate(config)
  subdir = "checkpoints"
  if ema is not None:
    sigma_rel = ema_snapshots.parse_ema_name(ema)
    subdir = ema_snapshots.posthoc_subdir(sigma_rel)
    if not (epath.Path(workdir) / subdir).exists():
      raise FileNotFoundError(
          f"--ema={ema}: {epath.Path(workdir) / subdir} does not exist; reconstruct it with "
          f"python -m cfg_jax.posthoc_ema --workdir={workdir} --sigma_rel={sigma_rel:g}.")
  model = models.create_model(config)
  mesh = parallel.data_mesh()
  abstract = checkpointing.abstract_like(models.param_shapes(model, config),
                                         parallel.replicated(mesh))
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True, subdir=subdir)
  try:
    step, params = checkpointer.restore_newest(
        lambda s: checkpointer.restore_params(s, abstract, config), step=step)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"--workdir={workdir} has no checkpoint yet.") from e
  finally:
    checkpointer.close()
  return Run(config, model, params, step)


def load_classifier(workdir: epath.PathLike | None, scales: Sequence[float] | None, *,
                    run_config: ml_collections.ConfigDict) -> Run | None:
  """The classifier run of --classifier_workdir (None without one), checked, before its
  weights are read, to be a classifier of run_config's examples and classes and to come
  with --classifier_scale."""
  if (workdir is None) != (scales is None):
    raise ValueError("--classifier_workdir and --classifier_scale go together.")
  if workdir is None:
    return None
  extras.check_path(workdir, flag="--classifier_workdir")
  try:
    config = config_files.load_config(workdir)
    if not models.is_classifier(config):
      raise ValueError(f"--classifier_workdir={workdir} holds a {config.model.name!r} model, "
                       f"not a classifier.")
    theirs, ours = config_lib.example_shape(config), config_lib.example_shape(run_config)
    if (theirs, config.data.num_classes) != (ours, run_config.data.num_classes):
      raise ValueError(
          f"--classifier_workdir={workdir} classifies examples of shape {theirs} into "
          f"{config.data.num_classes} classes; the run samples {ours} of "
          f"{run_config.data.num_classes} classes. config.data's image_size, channels and "
          f"num_classes must be the same in both.")
    return load_run(workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"--classifier_workdir={workdir}: {e}") from e


def make_labels(num_classes: int, *, num_samples: int | None = None,
                per_class: int | None = None, labels: Sequence[int] | None = None) -> np.ndarray:
  """int32 labels: explicit ones, `per_class` of each class, or `num_samples` spread evenly."""
  if sum(x is not None for x in (num_samples, per_class, labels)) != 1:
    raise ValueError("Give exactly one of --num_samples, --per_class or --labels.")
  if labels is not None:
    labels = np.asarray(labels, np.int64)
    bad = labels[(labels < 0) | (labels >= num_classes)]
    if labels.size == 0 or bad.size:
      raise ValueError(f"--labels must be a non-empty list of classes in [0, {num_classes}), "
                       f"got {bad[:5].tolist() or 'none'}.")
    return labels.astype(np.int32)
  if per_class is not None:
    if per_class < 1:
      raise ValueError(f"--per_class must be >= 1, got {per_class}.")
    return np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
  if num_samples < 1:
    raise ValueError(f"--num_samples must be >= 1, got {num_samples}.")
  return (np.arange(num_samples) % num_classes).astype(np.int32)


def sampling_spec(config: ml_collections.ConfigDict,
                  overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """A run's config.sampling with `overrides` applied ({"num_steps": 50,
  "guidance_params.eta": 0.}, the names under config.sampling, as `--sampling.<name>` gives
  them), validated by config_lib. The run's config is not changed."""
  fields = config.sampling.to_dict()
  for name, value in (overrides or {}).items():
    if f"sampling.{name}" not in config_lib.RULES:
      raise ValueError(f"Unknown config field config.sampling.{name}; the fields are those "
                       f"of cfg_jax.config_lib.base_config().sampling.")
    *path, field = name.split(".")
    node = fields
    for key in path:
      node = node[key]
    node[field] = value
  spec = ml_collections.ConfigDict(fields)
  config_lib.validate_sampling(spec)
  return spec


def describe_guidance(spec: ml_collections.ConfigDict) -> str:
  """How a spec guides, for reports: the rule with its parameters, the w schedule unless
  constant, and where ("at every step" or "for λ in [lo, hi]")."""
  rule = guidance.make_rule(spec.guidance, spec.guidance_params.to_dict())
  params = ", ".join(f"{f.name}={getattr(rule, f.name):g}" for f in dataclasses.fields(rule))
  text = spec.guidance + (f" ({params})" if params else "")
  if spec.w_schedule != "constant":
    text += f", w {spec.w_schedule} over the steps"
  interval = spec.guidance_interval
  return text + (f" for λ in [{interval[0]:g}, {interval[1]:g}]" if interval else
                 " at every step")


def load_guide(workdir: epath.PathLike, *, step: int | None, run: Run) -> Run:
  """The guide network of autoguidance (--guide_workdir, --guide_step), checked, before
  its weights are read, to model run's examples, classes and parameterization."""
  flag = "--guide_workdir"
  extras.check_path(workdir, flag=flag)
  try:
    config = config_files.load_config(workdir)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{flag}={workdir}: {e}") from e
  if models.is_classifier(config) or config.model.w_emb_ch:
    kind = "classifier" if models.is_classifier(config) else "distilled student"
    raise ValueError(f"{flag}={workdir} holds a {kind}; the guide must be a conditional "
                     f"diffusion model such as the run's.")
  theirs = (config_lib.example_shape(config), config.data.num_classes,
            config.diffusion.prediction)
  ours = (config_lib.example_shape(run.config), run.config.data.num_classes,
          run.config.diffusion.prediction)
  if theirs != ours:
    raise ValueError(f"{flag}={workdir} models examples of shape {theirs[0]} in {theirs[1]} "
                     f"classes predicting {theirs[2]!r}; the run: {ours[0]}, {ours[1]}, "
                     f"{ours[2]!r}. config.data's image_size, channels and num_classes and "
                     f"config.diffusion.prediction must be the same in both.")
  try:
    return load_run(workdir, step=step)
  except FileNotFoundError as e:
    raise FileNotFoundError(f"{flag}={workdir}: {e}") from e


def make_run_sample_fn(run: Run, spec: ml_collections.ConfigDict | None = None, *,
                       classifier: Run | None = None, guide: Run | None = None,
                       condition_model: bool = True) -> Any:
  """`make_sample_fn` for a restored run with the sampling spec `spec` (default: the run's
  config.sampling; see `sampling_spec`), its options passed whole.

  `classifier` adds classifier guidance; `guide` (`load_guide`) makes the second pass of
  each guided step that network on the labels (autoguidance), in one call with the run's
  network when both are the same architecture. A distilled student (a network with a w
  input) gets `make_student_sample_fn`: deterministic, one pass per step, unguided by
  any rule.
  """
  config = run.config
  spec = config.sampling if spec is None else spec
  config_lib.validate_sampling(spec)
  options = sampling.spec_options(spec)
  apply_fn = models.make_apply_fn(run.model)
  if models.takes_w(run.model):
    plain = dict(sampler="ddim", guidance="cfg", w_schedule="constant", guidance_interval=())
    if ({k: options[k] for k in plain} != plain or classifier or guide
        or not condition_model):
      raise ValueError("A distilled student samples deterministically with w as its input: "
                       "it takes no sampling.sampler other than 'ddim', no guidance rule, w "
                       "schedule or interval, no classifier, guide or unconditional sampling.")
    return sampling.make_student_sample_fn(
        apply_fn, shape=config_lib.example_shape(config), num_steps=options["num_steps"],
        null_label=config.data.num_classes, logsnr_min=config.diffusion.logsnr_min,
        logsnr_max=config.diffusion.logsnr_max, prediction=config.diffusion.prediction,
        clip_x=options["clip_x"])
  classifier_fn = None
  if classifier is not None:
    classifier_fn = lambda p, z, logsnr: classifier.model.apply({"params": p}, z, logsnr,
                                                                train=False)
  guide_fn = None
  if guide is not None:
    same = checkpointing.signature(guide.config) == checkpointing.signature(config)
    guide_fn = apply_fn if same else models.make_apply_fn(guide.model)
  return sampling.make_sample_fn(
      apply_fn, shape=config_lib.example_shape(config), null_label=config.data.num_classes,
      logsnr_min=config.diffusion.logsnr_min, logsnr_max=config.diffusion.logsnr_max,
      prediction=config.diffusion.prediction, classifier_fn=classifier_fn,
      condition_model=condition_model, guide_fn=guide_fn, **options)


def sample_in_batches(sample_fn, params, labels: np.ndarray, *, w: float | None,
                      batch_size: int, seed: int, classifier_params: Any = None,
                      classifier_scale: float | None = None, guide_params: Any = None,
                      progress: bool = True) -> np.ndarray:
  """Samples for all labels, `batch_size` at a time, each batch sharded over the devices.

  The last batch is padded to batch_size (so every call has one shape and one compile)
  and the padding dropped (`parallel.apply_in_batches`). Batch k uses rng
  fold_in(PRNGKey(seed), k).
  """
  num_batches = -(-len(labels) // batch_size)
  kwargs = {}
  if classifier_scale is not None:
    kwargs = dict(classifier_params=classifier_params, classifier_scale=classifier_scale)
  if guide_params is not None:
    kwargs["guide_params"] = guide_params

  def sample_batch(k: int, batch_labels: jax.Array) -> jax.Array:
    if progress:
      logging.info("Sampling w=%s: batch %d of %d.", w, k + 1, num_batches)
    return sample_fn(params, jax.random.fold_in(jax.random.PRNGKey(seed), k), batch_labels, w,
                     **kwargs)

  return parallel.apply_in_batches(sample_batch, labels, batch_size=batch_size)


def sample_guidance_grid(sample_fn, run: Run, labels: np.ndarray, *,
                         ws: Sequence[float | None], classifier: Run | None = None,
                         classifier_scales: Sequence[float] | None = None,
                         guide: Run | None = None, batch_size: int, seed: int
                         ) -> Iterator[tuple[float | None, float | None, np.ndarray]]:
  """`(classifier scale, w, samples)` for every w at each classifier scale (the scale is
  None without a classifier), sampled by `sample_in_batches`; `guide` is the autoguidance
  network of `make_run_sample_fn`, if any."""
  for scale in classifier_scales or [None]:
    for w in ws:
      yield scale, w, sample_in_batches(
          sample_fn, run.params, labels, w=w, batch_size=batch_size, seed=seed,
          classifier_params=None if classifier is None else classifier.params,
          classifier_scale=scale, guide_params=None if guide is None else guide.params,
          progress=jax.process_index() == 0)


def sample_ws(run: Run, spec: ml_collections.ConfigDict | None, *, ws: Sequence[float],
              labels: np.ndarray, batch_size: int, seed: int, guide: Run | None = None
              ) -> dict[float, np.ndarray]:
  """Samples of a run with the sampling spec `spec` (None: the run's) for each w, by
  `sample_guidance_grid`: float images in [-1, 1] (or points). `guide` is an autoguidance
  network (`load_guide`)."""
  batch_size = min(batch_size, len(labels))  # the last batch is padded to batch_size
  sample_fn = make_run_sample_fn(run, spec, guide=guide)
  return {w: x for _, w, x in sample_guidance_grid(sample_fn, run, labels, ws=ws, guide=guide,
                                                   batch_size=batch_size, seed=seed)}


def write_sample_files(x: np.ndarray, labels: np.ndarray, out: epath.Path, name: str, *,
                       num_classes: int, title: str = "") -> None:
  """`<name>.png` (one row per class) and `<name>.npz` (uint8 images or float points)."""
  out.mkdir(parents=True, exist_ok=True)
  visualization.save_sample_picture(x, labels, out / f"{name}.png", num_classes=num_classes,
                             title=title)
  arrays = {"labels": labels}
  if x.ndim == 4:
    arrays["images"] = visualization.to_uint8(x)
  else:
    arrays["points"] = x.astype(np.float32)
  files.write_npz_atomic(out / f"{name}.npz", **arrays)
