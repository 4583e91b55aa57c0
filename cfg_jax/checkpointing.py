"""Checkpoints of a run with orbax's CheckpointManager: the train state and its metadata.

A checkpoint at step N holds two items: `state` (params, EMA params, optimizer state,
step, rng: a pytree of arrays) and `meta` (JSON: the data position and the model's
signature). The signature (model, diffusion and data-shape fields of the config) is
compared before any array is read, so a workdir holding another model is refused with a
clear message instead of failing deep inside orbax.
"""
from __future__ import annotations

import json
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from etils import epath

class CheckpointWriteError(OSError):
  """A checkpoint could not be written; earlier ones are untouched."""


SIGNATURE_FIELDS = {
    "model": None,  # every model field but those of NOT_IN_SIGNATURE
    "diffusion": ("prediction",),
    "data": ("image_size", "channels", "num_classes"),
}
# Fields that change how the parameters are computed with, not what they are: a run may
# resume with them changed (and checkpoints written before they existed still match).
NOT_IN_SIGNATURE = ("model.remat",)


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
  """Saves and restores `(state, meta)` under `<workdir>/checkpoints`, keeping `max_to_keep`."""

  def __init__(self, workdir: epath.PathLike, *, max_to_keep: int):
    self.directory = epath.Path(workdir) / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory, item_names=("state", "meta"),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             cleanup_tmp_directories=True))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

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
    return (f"Could not write {what} to {self.directory}: {type(error).__name__}: {error}. "
            f"Earlier checkpoints are intact (latest complete: step "
            f"{self._manager.latest_step()}); free disk space or fix permissions, then rerun "
            f"the same command to resume.")

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

    Raises ValueError, before reading any array, if the checkpoint's model signature
    differs from `config`'s.
    """
    meta = self.restore_meta(step)
    check_signature(meta.get("signature", {}), signature(config), self.directory / str(step))
    restored = self._manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
    return restored["state"], meta

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # the asynchronous part of a save failed
      raise CheckpointWriteError(self._write_failure(None, e)) from e

  def close(self) -> None:
    self._manager.close()


CONFIG_FILE = "config.json"


def save_config(workdir: epath.PathLike, config: ml_collections.ConfigDict) -> None:
  """Writes the run's config beside its checkpoints (process 0 only), for sample/evaluate."""
  if jax.process_index() == 0:
    path = epath.Path(workdir) / CONFIG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(config.to_json(indent=2))


def load_config(workdir: epath.PathLike) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was trained with."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(f"--workdir={workdir} holds no {CONFIG_FILE}: it is not a cfg_jax "
                            f"training run (python -m cfg_jax.train writes one).")
  # JSON turns the config's tuples into lists, which config_lib.validate accepts alike.
  return ml_collections.ConfigDict(json.loads(path.read_text()))


def check_signature(saved: dict[str, Any], current: dict[str, Any], where: Any) -> None:
  """Refuses to restore a checkpoint of a different model; names every differing field."""
  diffs = [f"config.{k}: checkpoint has {saved.get(k)!r}, config has {current.get(k)!r}"
           for k in sorted(set(saved) | set(current)) if saved.get(k) != current.get(k)]
  if diffs:
    raise ValueError(f"The checkpoint {where} was written by a different model; refusing to "
                     f"restore it. Use another --workdir or the same config. " + "; ".join(diffs))


def abstract_like(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """ShapeDtypeStructs of `tree` with `sharding`: what orbax restores into."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)
