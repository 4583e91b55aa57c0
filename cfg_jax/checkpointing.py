"""Checkpoints of a run with orbax's CheckpointManager: the train state and its metadata.

A checkpoint at step N holds two items: `state` (params, EMA params, optimizer state,
step, rng: a pytree of arrays) and `meta` (JSON: the data position and the model's
signature). The signature (model, diffusion and data-shape fields of the config) is
compared before any array is read, so a workdir holding another model is refused with a
clear message instead of failing deep inside orbax.

Only the trainer writes: generate, evaluate and `runs.load_run` open the checkpoints
read-only (`Checkpointer(workdir, read_only=True)`), which neither creates folders nor
removes orbax's temporary folders, so reading a run while it trains, saves or is killed
never disturbs it. A checkpoint that cannot be restored (missing or truncated files,
unreadable metadata) is reported and the next older one is used (`restore_newest`).
"""
from __future__ import annotations

import datetime
import logging as std_logging
from typing import Any, Callable, TypeVar

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from cfg_jax import checkpoint_errors
from cfg_jax import config_files
from cfg_jax import data_sources

T = TypeVar("T")
DAMAGED_DIR = "damaged_checkpoints"  # where the trainer moves checkpoints it cannot restore


class CheckpointWriteError(OSError):
  """A checkpoint could not be written; earlier ones are untouched."""


class CheckpointRestoreError(RuntimeError):
  """No checkpoint of a run (or not the one asked for) can be restored."""


class ModelMismatchError(ValueError):
  """The checkpoint holds another model than the config describes."""


SIGNATURE_FIELDS = {
    "model": None,  # every model field but those of NOT_IN_SIGNATURE
    "diffusion": ("prediction",),
    "data": ("image_size", "channels", "num_classes"),
}
# Fields that change how the parameters are computed with or how they start, not what they
# are: a run may resume with them changed (and checkpoints written before they existed
# still match).
NOT_IN_SIGNATURE = ("model.remat", "model.label_emb_std")
def signature(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields that fix the shapes and meaning of the saved parameters."""
  out = {}
  for group, fields in SIGNATURE_FIELDS.items():
    values = config[group].to_dict()
    for name in fields or sorted(values):
      if f"{group}.{name}" in NOT_IN_SIGNATURE:
        continue
      value = values[name]
      out[f"{group}.{name}"] = list(value) if isinstance(value, tuple) else value
  if data_sources.holds_points(config.data):
    out.pop("data.image_size"), out.pop("data.channels")
  return out


class Checkpointer:
  """Saves and restores `(state, meta)` under `<workdir>/<subdir>`, keeping `max_to_keep`
  (None: all). The train state's are under checkpoints/; `ema_snapshots` keeps others there.

  `read_only=True` (generate, evaluate): restores only; creates, writes and deletes nothing,
  not even the temporary folders of a save in progress, and lists the steps without
  reading each one's metadata (which the trainer may be deleting).
  """

  def __init__(self, workdir: epath.PathLike, *, max_to_keep: int | None = None,
               read_only: bool = False, subdir: str = "checkpoints"):
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / subdir
    if read_only:
      std_logging.getLogger("absl").addFilter(checkpoint_errors.READ_ONLY_NOTICE)
      options = ocp.CheckpointManagerOptions(read_only=True, create=False,
                                             cleanup_tmp_directories=False,
                                             save_interval_steps=0,
                                             lightweight_initialize=True)
    else:
      options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(self.directory, item_names=("state", "meta"),
                                          options=options)

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def steps(self) -> list[int]:
    """The steps of the complete checkpoints, oldest first."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, meta: dict[str, Any]) -> None:
    """Starts an asynchronous save of step `step`; `wait()` blocks until it is on disk.

    Orbax writes into a temporary folder and renames it when complete, so a failed or
    killed save never damages an earlier checkpoint; its leftovers are cleaned on start.
    """
    try:
      self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       meta=ocp.args.JsonSave(meta)),
                         force=True)
    except Exception as e:  # orbax raises whatever the filesystem raised
      raise CheckpointWriteError(self._write_failure(step, e)) from e

  def _write_failure(self, step: int | None, error: Exception) -> str:
    what = "a checkpoint" if step is None else f"the checkpoint of step {step}"
    cause, remedy, shown = checkpoint_errors.write_failure_cause(error)
    return (f"Could not write {what} to {self.directory}: {cause} "
            f"({checkpoint_errors.short_error(shown)}). "
            f"Earlier checkpoints are intact (latest complete: step "
            f"{self._manager.latest_step()}); {remedy}, then rerun the same command to resume.")

  def restore_params(self, step: int, abstract_params: Any, config: ml_collections.ConfigDict,
                     *, key: str = "ema_params") -> Any:
    """Restores only `state.<key>` (EMA params by default), e.g. for sampling."""
    check_signature(self.restore_meta(step).get("signature", {}), signature(config),
                    self.directory / str(step))
    item = {key: abstract_params}
    restored = self._manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=item, restore_args=ocp.checkpoint_utils.construct_restore_args(item),
        partial_restore=True)))
    return restored["state"][key]

  def restore_meta(self, step: int) -> dict[str, Any]:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, step: int, abstract_state: Any, config: ml_collections.ConfigDict
              ) -> tuple[Any, dict[str, Any]]:
    """Restores step `step` into the shapes and shardings of `abstract_state`.

    Raises ModelMismatchError (a ValueError), before reading any array, if the
    checkpoint's model signature differs from `config`'s.
    """
    meta = self.restore_meta(step)
    check_signature(meta.get("signature", {}), signature(config), self.directory / str(step))
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], meta

  def restore_raw(self, step: int) -> Any:
    """Step `step`'s state as saved, on one device and without a target structure: for
    inspecting a checkpoint whatever the device count that wrote it."""
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    return self._manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(fallback_sharding=sharding)))["state"]

  def restore_newest(self, restore: Callable[[int], T], *, step: int | None = None,
                     move_damaged: bool = False) -> tuple[int, T]:
    """`(s, restore(s))` for the newest step s that restores, or for `step` if given.

    A step whose restore raises (missing or truncated files, unreadable metadata) is
    logged as a warning naming it and why, and the next older step is tried; a step that
    vanished meanwhile (rotated out by the running trainer) is passed over. A model
    mismatch is raised at once. With `move_damaged` (the trainer, which holds the
    workdir), the steps that failed are moved, never deleted, to
    `<workdir>/damaged_checkpoints/<step>-<UTC time>/` so that training can write those
    steps again; readers leave them in place.

    Raises:
      FileNotFoundError: there is no checkpoint.
      ValueError: `step` is not one of the checkpoints.
      CheckpointRestoreError: `step`, or no step at all, restores.
      ModelMismatchError: from `restore`.
    """
    failures = {}
    while True:
      steps = self.steps()
      if not steps and not failures:
        raise FileNotFoundError(f"{self.directory} holds no checkpoint yet.")
      if step is not None and step not in steps:
        raise ValueError(f"--step={step}: {self.directory} has no checkpoint of that step; "
                         f"it has steps {', '.join(map(str, steps))}.")
      candidates = [s for s in reversed(steps) if s not in failures and step in (None, s)]
      if not candidates:
        break
      try:
        value = restore(candidates[0])
      except ModelMismatchError:
        raise
      except Exception as e:  # orbax and tensorstore raise many types on damaged files
        checkpoint_errors.quiet_abandoned_reads()
        self._manager.reload()
        if candidates[0] in self._manager.all_steps():  # else rotated out meanwhile: not damage
          failures[candidates[0]] = checkpoint_errors.short_error(e)
        continue
      return self._restored(candidates[0], value, failures, move_damaged)
    if step is not None:
      raise CheckpointRestoreError(f"Checkpoint step {step} in {self.directory} cannot be "
                                   f"restored ({failures[step]}).")
    reasons = "; ".join(f"step {s} ({why})" for s, why in failures.items())
    raise CheckpointRestoreError(
        f"No checkpoint in {self.directory} can be restored: {reasons}. Nothing was moved or "
        f"deleted: restore these folders from a copy, or move them away to train afresh.")

  def _restored(self, step: int, value: T, failures: dict[int, str],
                move_damaged: bool) -> tuple[int, T]:
    """Reports (and with `move_damaged`, moves aside) the failed steps newer than `step`."""
    moved_to = {}
    if move_damaged and failures:
      stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
      for damaged in failures:
        moved_to[damaged] = self.workdir / DAMAGED_DIR / f"{damaged}-{stamp}"
        if jax.process_index() == 0:
          moved_to[damaged].parent.mkdir(parents=True, exist_ok=True)
          (self.directory / str(damaged)).rename(moved_to[damaged])
      if jax.process_count() > 1:
        multihost_utils.sync_global_devices("cfg_jax: damaged checkpoints moved")
      self._manager.reload()
    for damaged, why in failures.items():
      if move_damaged:
        logging.warning("Checkpoint step %d in %s cannot be restored (%s); resuming from step "
                        "%d. The damaged checkpoint was moved to %s.", damaged, self.directory,
                        why, step, moved_to[damaged])
      else:
        logging.warning("Checkpoint step %d in %s cannot be restored (%s); using step %d "
                        "instead.", damaged, self.directory, why, step)
    return step, value

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # the asynchronous part of a save failed
      raise CheckpointWriteError(self._write_failure(None, e)) from e

  def close(self) -> None:
    self._manager.close()


def check_signature(saved: dict[str, Any], current: dict[str, Any], where: Any) -> None:
  """Refuses to restore a checkpoint of a different model; names every differing field."""
  saved = {k: v for k, v in config_files.ADDED_FIELDS.items() if k in current} | saved
  diffs = [f"config.{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
           for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
  if diffs:
    raise ModelMismatchError(f"The checkpoint {where} was written by a different model; "
                             f"refusing to restore it. Use another --workdir or the same "
                             f"config. " + "; ".join(diffs))


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree` with `sharding`: what orbax restores into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


