"""Where a run's power EMAs are kept: the snapshots of the tracked widths, and the EMAs of
other widths reconstructed from them.

A run with config.training.ema = "power" writes the EMA of every σ_rel of
training.ema_sigma_rels every training.ema_snapshot_every steps and at its last step to
`<workdir>/ema_snapshots/<step>/` (orbax, as its checkpoints; every snapshot is kept,
while checkpoints rotate). `python -m cfg_jax.posthoc_ema` writes the EMA of a width σ_rel
reconstructed at a snapshot's step to `<workdir>/posthoc_ema/sigma_rel_<σ_rel>/<step>/`,
which generate and evaluate read with `--ema=sigma_rel_<σ_rel>`.
"""
from __future__ import annotations

import re
from typing import Any, Iterator, Sequence

from absl import logging
from etils import epath
import jax
import ml_collections

from cfg_jax import checkpointing
from cfg_jax import models

SNAPSHOTS = "ema_snapshots"
POSTHOC = "posthoc_ema"
_NAME = re.compile(r"sigma_rel_(\d*\.?\d+(?:e-?\d+)?)")


def ema_name(sigma_rel: float) -> str:
  """The name of the reconstructed EMA of width σ_rel: `sigma_rel_0.07`."""
  return f"sigma_rel_{float(sigma_rel):g}"


def parse_ema_name(name: str, *, flag: str = "--ema") -> float:
  """σ_rel of a name such as `sigma_rel_0.07`; ValueError naming `flag` otherwise."""
  match = _NAME.fullmatch(name)
  if not match:
    raise ValueError(f"{flag}={name!r} is invalid: it must be 'sigma_rel_<width>' (e.g. "
                     f"sigma_rel_0.07), the name python -m cfg_jax.posthoc_ema gives an EMA.")
  return float(match.group(1))


def posthoc_subdir(sigma_rel: float) -> str:
  """The folder under the workdir holding the reconstructed EMA of width σ_rel."""
  return f"{POSTHOC}/{ema_name(sigma_rel)}"


class SnapshotWriter:
  """Saves the power EMAs of a training state as snapshots of `workdir` (asynchronously,
  like the checkpoints). A step already on disk is left as it is: a resumed run recomputes
  it bit for bit."""

  def __init__(self, workdir: epath.PathLike, config: ml_collections.ConfigDict):
    self._checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None, subdir=SNAPSHOTS)
    self._written = set(self._checkpointer.steps())
    self._meta = {"signature": checkpointing.signature(config),
                  "sigma_rels": list(config.training.ema_sigma_rels)}

  def save(self, step: int, state: Any) -> None:
    if step in self._written:
      logging.info("EMA snapshot of step %d is already in %s; kept.", step,
                   self._checkpointer.directory)
      return
    self._checkpointer.save(step, {"emas": [state.ema_params, *state.extra_emas]},
                            self._meta | {"step": step})
    self._written.add(step)

  def close(self) -> None:
    """Waits for the saves in flight, then closes."""
    try:
      self._checkpointer.wait()
    finally:
      self._checkpointer.close()


def steps_in(workdir: epath.PathLike, subdir: str) -> list[int]:
  """The complete steps under `<workdir>/<subdir>` (SNAPSHOTS or a `posthoc_subdir`),
  oldest first; [] where the folder does not exist."""
  if not (epath.Path(workdir) / subdir).exists():
    return []
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True, subdir=subdir)
  try:
    return checkpointer.steps()
  finally:
    checkpointer.close()


def snapshot_steps(workdir: epath.PathLike) -> list[int]:
  """The steps of a run's complete snapshots, oldest first ([] without any)."""
  return steps_in(workdir, SNAPSHOTS)


def snapshot_widths(workdir: epath.PathLike, steps: Sequence[int]) -> list[list[float]]:
  """The σ_rels held by each snapshot of `steps`, from their metadata alone."""
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True, subdir=SNAPSHOTS)
  try:
    return [checkpointer.restore_meta(step)["sigma_rels"] for step in steps]
  finally:
    checkpointer.close()


def read_snapshots(workdir: epath.PathLike, config: ml_collections.ConfigDict,
                   steps: Sequence[int]) -> Iterator[Any]:
  """The EMAs of the snapshots of `steps`, one tree at a time, in the order of `steps` and
  of each one's σ_rels, on the host."""
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params = checkpointing.abstract_like(models.param_shapes(models.create_model(config), config),
                                       sharding)
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True, subdir=SNAPSHOTS)
  try:
    for step in steps:
      count = len(checkpointer.restore_meta(step)["sigma_rels"])
      state, _ = checkpointer.restore(step, {"emas": [params] * count}, config)
      yield from jax.device_get(state["emas"])
  finally:
    checkpointer.close()
