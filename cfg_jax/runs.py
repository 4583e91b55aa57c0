"""A trained run: restore it, build its sampler, sample in device batches, write outputs.

Shared by the generate and evaluate CLIs and by the training loop's sample grids. A
guided-distillation folder (`python -m cfg_jax.distill`) holds one run per phase,
stage1/ and steps_<N>/; `load_run` of the folder restores its last phase done.
"""
from __future__ import annotations

import dataclasses
import io
import re
from typing import Any, Iterator, Sequence

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from cfg_jax import checkpointing
from cfg_jax import config_lib
from cfg_jax import extras
from cfg_jax import files
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


def load_run(workdir: epath.PathLike, *, step: int | None = None) -> Run:
  """Restores the config and EMA params of a training run, replicated.

  The newest checkpoint that restores, or `step` (see `Checkpointer.restore_newest`). A
  distillation folder stands for its `last_phase`. The checkpoints are opened read-only:
  reading never disturbs a run that is training.
  """
  extras.check_path(workdir, flag="--workdir")
  if (epath.Path(workdir) / DISTILL_FILE).exists():
    workdir = last_phase(workdir)
  config = checkpointing.load_config(workdir)
  config_lib.validate(config)
  model = models.create_model(config)
  mesh = parallel.data_mesh()
  abstract = checkpointing.abstract_like(models.param_shapes(model, config),
                                         parallel.replicated(mesh))
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
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
    config = checkpointing.load_config(workdir)
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


def guidance_interval_of(config: ml_collections.ConfigDict,
                         override: Sequence[float] | None = None) -> tuple[float, ...]:
  """The guidance interval a run's sampler uses: `override`, else (None) the run's
  config.sampling.guidance_interval; () guides every step."""
  return tuple(config.sampling.guidance_interval if override is None else override)


def describe_guidance_interval(interval: Sequence[float]) -> str:
  """Where a report says guidance was applied: "for λ in [lo, hi]" or "at every step"."""
  return f"for λ in [{interval[0]:g}, {interval[1]:g}]" if interval else "at every step"


def make_run_sample_fn(run: Run, *, num_steps: int | None = None, v: float | None = None,
                       sampler: str | None = None, clip_x: bool | None = None,
                       guidance_interval: Sequence[float] | None = None,
                       classifier: Run | None = None, condition_model: bool = True) -> Any:
  """`make_sample_fn` for a restored run; None options default to the run's sampling config.

  guidance_interval is (logsnr_lo, logsnr_hi), or () to guide at every step. A distilled
  student (a network with a w input) gets `make_student_sample_fn`: deterministic, one
  pass per step, without guidance options.
  """
  config = run.config
  s = config.sampling
  num_steps = num_steps or s.num_steps
  interval = guidance_interval_of(config, guidance_interval)
  clip_x = s.clip_x if clip_x is None else clip_x
  if models.takes_w(run.model):
    if (sampler or "ddim") != "ddim" or interval or classifier or not condition_model:
      raise ValueError("A distilled student samples deterministically with w as its input: "
                       "it takes no --sampler=stochastic, --guidance_interval, classifier or "
                       "unconditional sampling.")
    return sampling.make_student_sample_fn(
        models.make_apply_fn(run.model), shape=config_lib.example_shape(config),
        num_steps=num_steps, null_label=config.data.num_classes,
        logsnr_min=config.diffusion.logsnr_min, logsnr_max=config.diffusion.logsnr_max,
        prediction=config.diffusion.prediction, clip_x=clip_x)
  classifier_fn = None
  if classifier is not None:
    classifier_fn = lambda p, z, logsnr: classifier.model.apply({"params": p}, z, logsnr,
                                                                train=False)
  return sampling.make_sample_fn(
      models.make_apply_fn(run.model), shape=config_lib.example_shape(config),
      num_steps=num_steps, null_label=config.data.num_classes,
      v=s.v if v is None else v, logsnr_min=config.diffusion.logsnr_min,
      logsnr_max=config.diffusion.logsnr_max, prediction=config.diffusion.prediction,
      sampler=s.sampler if sampler is None else sampler, clip_x=clip_x,
      guidance_interval=interval or None,
      classifier_fn=classifier_fn, condition_model=condition_model)


def sample_in_batches(sample_fn, params, labels: np.ndarray, *, w: float | None,
                      batch_size: int, seed: int, classifier_params: Any = None,
                      classifier_scale: float | None = None, progress: bool = True
                      ) -> np.ndarray:
  """Samples for all labels, `batch_size` at a time, each batch sharded over the devices.

  The last batch is padded to batch_size (so every call has one shape and one compile)
  and the padding dropped (`parallel.apply_in_batches`). Batch k uses rng
  fold_in(PRNGKey(seed), k).
  """
  num_batches = -(-len(labels) // batch_size)
  kwargs = {}
  if classifier_scale is not None:
    kwargs = dict(classifier_params=classifier_params, classifier_scale=classifier_scale)

  def sample_batch(k: int, batch_labels: jax.Array) -> jax.Array:
    if progress:
      logging.info("Sampling w=%s: batch %d of %d.", w, k + 1, num_batches)
    return sample_fn(params, jax.random.fold_in(jax.random.PRNGKey(seed), k), batch_labels, w,
                     **kwargs)

  return parallel.apply_in_batches(sample_batch, labels, batch_size=batch_size)


def sample_guidance_grid(sample_fn, run: Run, labels: np.ndarray, *,
                         ws: Sequence[float | None], classifier: Run | None = None,
                         classifier_scales: Sequence[float] | None = None, batch_size: int,
                         seed: int) -> Iterator[tuple[float | None, float | None, np.ndarray]]:
  """`(classifier scale, w, samples)` for every w at each classifier scale (the scale is
  None without a classifier), sampled by `sample_in_batches`."""
  for scale in classifier_scales or [None]:
    for w in ws:
      yield scale, w, sample_in_batches(
          sample_fn, run.params, labels, w=w, batch_size=batch_size, seed=seed,
          classifier_params=None if classifier is None else classifier.params,
          classifier_scale=scale, progress=jax.process_index() == 0)


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
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  files.write_bytes_atomic(out / f"{name}.npz", buffer.getvalue())
