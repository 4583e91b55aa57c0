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
import errno
import json
import logging as std_logging
import sys
from typing import Any, Callable, TypeVar

from absl import logging
import jax
from jax.experimental import multihost_utils
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

from cfg_jax import files

T = TypeVar("T")
DAMAGED_DIR = "damaged_checkpoints"  # where the trainer moves checkpoints it cannot restore
_ORBAX_TMP = ".orbax-checkpoint-tmp"  # the suffix of orbax's in-progress save folders


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
# Fields added after runs were first written, with the value that means what a run written
# without the field did: `load_config` fills them into an older run's config.json and
# `check_signature` into an older checkpoint's signature. label_emb_std only sets how a
# table starts, which a restored run never repeats.
ADDED_FIELDS = {"model.logsnr_emb_ch": 0, "model.label_emb_std": 1., "model.w_emb_ch": 0,
                "training.lr_schedule": "constant", "sampling.guidance_interval": ()}


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
  if config.data.source == "toy2d":
    out.pop("data.image_size"), out.pop("data.channels")
  return out


class Checkpointer:
  """Saves and restores `(state, meta)` under `<workdir>/checkpoints`, keeping `max_to_keep`.

  `read_only=True` (generate, evaluate): restores only; creates, writes and deletes nothing,
  not even the temporary folders of a save in progress, and lists the steps without
  reading each one's metadata (which the trainer may be deleting).
  """

  def __init__(self, workdir: epath.PathLike, *, max_to_keep: int | None = None,
               read_only: bool = False):
    self.workdir = epath.Path(workdir)
    self.directory = self.workdir / "checkpoints"
    if read_only:
      std_logging.getLogger("absl").addFilter(_READ_ONLY_NOTICE)
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
    cause, remedy, shown = write_failure_cause(error)
    return (f"Could not write {what} to {self.directory}: {cause} ({short_error(shown)}). "
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
        _quiet_abandoned_reads()
        self._manager.reload()
        if candidates[0] in self._manager.all_steps():  # else rotated out meanwhile: not damage
          failures[candidates[0]] = short_error(e)
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


CONFIG_FILE = "config.json"


def save_config(workdir: epath.PathLike, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config beside its checkpoints (process 0 only), for generate/evaluate."""
  if jax.process_index() == 0:
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(path, config.to_json(indent=2))


def load_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with, with the ADDED_FIELDS it predates."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"--workdir={workdir} holds no {CONFIG_FILE}: it is not a cfg_jax "
                            f"training run (python -m cfg_jax.train writes one).")
  # JSON turns the config's tuples into lists, which config_lib.validate accepts alike.
  fields = json.loads(path.read_text())
  for name, value in ADDED_FIELDS.items():
    group, field = name.split(".")
    fields.get(group, {}).setdefault(field, value)
  return ml_collections.ConfigDict(fields)


def check_signature(saved: dict[str, Any], current: dict[str, Any], where: Any) -> None:
  """Refuses to restore a checkpoint of a different model; names every differing field."""
  saved = {k: v for k, v in ADDED_FIELDS.items() if k in current} | saved
  diffs = [f"config.{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
           for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
  if diffs:
    raise ModelMismatchError(f"The checkpoint {where} was written by a different model; "
                             f"refusing to restore it. Use another --workdir or the same "
                             f"config. " + "; ".join(diffs))


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree` with `sharding`: what orbax restores into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def short_error(error: BaseException, limit: int = 300) -> str:
  """`Type: message` on one line, without tensorstore's spec dumps, at most ~`limit` chars."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else error
  text = " ".join(str(text).split(" [tensorstore_spec")[0].split())
  if len(text) > limit:
    text = f"{text[:limit // 3]} … {text[-2 * limit // 3:]}"
  return f"{type(error).__name__}: {text}"


def write_failure_cause(error: BaseException) -> tuple[str, str, BaseException]:
  """(what went wrong, what to do, the exception that shows it) for a failed checkpoint save.

  Looks through the exception and its causes, innermost first: a missing orbax temporary
  folder (deleted by another process during the save), a full disk, a read-only or
  forbidden folder.
  """
  chain, e = [], error
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in reversed(chain):
    text, code = str(e), getattr(e, "errno", None)
    if _ORBAX_TMP in text and (code == errno.ENOENT or "NOT_FOUND" in text):
      return ("its temporary folder vanished while the save was in progress: another process "
              "deleted it (a sample or evaluate of an older cfg_jax, a cleanup job or a sync "
              "tool)", "stop that process", e)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
      return "the disk is full", "free disk space", e
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or any(
        s in text for s in ("Read-only file system", "Permission denied")):
      return ("the folder is read-only or not writable",
              "fix its permissions, or use another --workdir", e)
  return "the write failed", "fix the cause", chain[-1]


class _DropMessages(std_logging.Filter):
  """Drops the log records whose message starts with one of `prefixes`."""

  def __init__(self, *prefixes: str):
    super().__init__()
    self.prefixes = prefixes

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.prefixes)


# Orbax's warning at every read-only CheckpointManager, which reads as a problem.
_READ_ONLY_NOTICE = _DropMessages("Given directory is read only")
# asyncio's reports of the reads that orbax abandons when a restore fails.
_ABANDONED_READS = _DropMessages("Task exception was never retrieved",
                                 "Future exception was never retrieved")


def _quiet_abandoned_reads() -> None:
  """Silences the echoes of a failed restore, which `restore_newest` reports in one line.

  When one array of a checkpoint cannot be read, orbax gives up its other reads: asyncio
  then logs each of their errors as "never retrieved", and tensorstore's callbacks of
  those still in flight find orbax's event loop closed ("Event loop is closed", through
  sys.unraisablehook), dozens of tracebacks repeating the reported error.
  """
  std_logging.getLogger("asyncio").addFilter(_ABANDONED_READS)  # a no-op once added
  if getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook
