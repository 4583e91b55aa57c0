"""The largest batch per device whose train step fits in memory, from XLA's memory analysis.

XLA's bytes for the compiled train step (arguments + outputs + temporaries - donated) at
two small batches give bytes per image; compiles around that estimate find the largest
multiple of a batch step within the memory jax may still use (`memory_stats()`:
`bytes_limit` less `bytes_in_use`, or a given limit where the device reports none, as the
CPU), and one step at that batch is run to confirm it.
"""
from __future__ import annotations

from typing import Any, Callable

import jax

from bench import common


def largest_fitting(fits: Callable[[int], bool], guess: int, *, step: int, cap: int) -> int:
  """The largest multiple of `step` in [step, cap] for which `fits` (monotone: true up to
  some batch) holds, or 0. Strides doubling away from `guess` bracket it, bisection
  narrows it, so a close guess costs a few calls of fits."""
  b = min(max(step, guess // step * step), cap // step * step)
  if fits(b):
    lo, stride = b, step
    while lo + stride <= cap and fits(lo + stride):
      lo, stride = lo + stride, 2 * stride
    hi = min(lo + stride, cap // step * step + step)
  else:
    hi, stride = b, step
    while hi - stride >= step and not fits(hi - stride):
      hi, stride = hi - stride, 2 * stride
    lo = max(hi - stride, 0)
  while hi - lo > step:  # lo fits (or is 0), hi does not
    mid = lo + (hi - lo) // (2 * step) * step
    lo, hi = (mid, hi) if fits(mid) else (lo, mid)
  return lo


def memory_limit(memory_limit_mib: int | None) -> dict[str, Any]:
  """The bytes a train step may use on the device, and where that number comes from."""
  stats = jax.devices()[0].memory_stats()
  if stats and "bytes_limit" in stats:
    return {"bytes": stats["bytes_limit"] - stats.get("bytes_in_use", 0),
            "source": "memory_stats: bytes_limit - bytes_in_use"}
  if memory_limit_mib:
    return {"bytes": memory_limit_mib * 2**20, "source": "--memory_limit_mib"}
  return {"bytes": None, "source": "the device reports no memory limit: pass --memory_limit_mib"}


def step_bytes(step: common.TrainStep, batch_size: int) -> int:
  """XLA's bytes for one train step: arguments, outputs and temporaries, less the donated
  state that outputs reuse."""
  m = step.compiled(batch_size).memory_analysis()
  return (m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
          + m.temp_size_in_bytes + m.generated_code_size_in_bytes)


def _runs(step: common.TrainStep, batch_size: int) -> bool:
  try:
    step.run_once(batch_size)
  except jax.errors.JaxRuntimeError as e:
    if "RESOURCE_EXHAUSTED" not in str(e):
      raise
    return False
  return True


def measure(step: common.TrainStep, limit: int, *, batch_step: int, train_batch: int,
            cap: int) -> dict[str, Any]:
  """The largest batch (a multiple of batch_step) whose train step fits in `limit` bytes.

  The straight line through the step's bytes at batch_step and at train_batch (compiled
  for the timing anyway; 2·batch_step if not larger) gives the first guess.
  """
  small = (batch_step, max(train_batch, 2 * batch_step))
  need = {b: step_bytes(step, b) for b in small}
  per_image = (need[small[1]] - need[small[0]]) / (small[1] - small[0])
  fixed = need[small[0]] - per_image * small[0]
  guess = int((limit - fixed) / per_image) if per_image > 0 else cap
  batch = largest_fitting(lambda b: step_bytes(step, b) <= limit, guess, step=batch_step,
                          cap=cap)
  confirmed = batch > 0 and _runs(step, batch)
  while batch > batch_step and not confirmed:  # XLA's analysis missed some memory
    batch -= batch_step
    confirmed = _runs(step, batch)
  return {"batch": batch, "bytes": step_bytes(step, batch) if batch else None,
          "bytes_per_image": per_image, "fixed_bytes": fixed, "limit_bytes": limit,
          "estimate": guess, "compiled_batches": sorted(step.compiled_batches()),
          "confirmed_by_running": confirmed}
