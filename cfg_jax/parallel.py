"""Data parallelism: one mesh axis `data` over every device of every host.

The batch is sharded over `data` and the state replicated; `jax.jit` (GSPMD) then runs
each device on its rows and turns batch means into all-reduces, which is what
`jax.pmap` with `lax.pmean(..., "data")` does, without pmap's per-device programs.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P


def data_mesh() -> jax.sharding.Mesh:
  """A 1-D mesh `data` of all devices; Auto axes let XLA propagate the batch sharding."""
  return jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: jax.sharding.Mesh) -> NamedSharding:
  return NamedSharding(mesh, P("data"))


def global_batch(local: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles the global batch from each host's rows (host p holds rows p*B/P..)."""
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in local.items()}


def to_host(x: jax.Array) -> np.ndarray:
  """All of `x` as numpy, on every host (a collective: every host must call it).

  `jax.device_get` reads only this host's devices, so it fails on a batch sharded over
  several hosts.
  """
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def apply_in_batches(fn: Callable[[int, jax.Array], Any], x: np.ndarray, *,
                     batch_size: int) -> Any:
  """fn(k, batch k) over the rows of x, `batch_size` rows at a time, gathered to the host.

  The last batch is padded with zero rows to batch_size, so that every call has one shape
  (one compile), and the padding is dropped from the outputs. Each batch is sharded over
  the devices when batch_size is a multiple of their number, else replicated. Returns
  fn's output tree with every leaf the numpy concatenation of its batches along axis 0.
  """
  if len(x) == 0:
    raise ValueError("apply_in_batches needs at least one row.")
  mesh = data_mesh()
  sharding = batch_sharded(mesh) if batch_size % jax.device_count() == 0 else replicated(mesh)
  outputs = []
  for k, start in enumerate(range(0, len(x), batch_size)):
    chunk = x[start:start + batch_size]
    padded = np.pad(chunk, [(0, batch_size - len(chunk))] + [(0, 0)] * (chunk.ndim - 1))
    out = fn(k, jax.device_put(padded, sharding))
    outputs.append(jax.tree.map(lambda leaf: to_host(leaf)[:len(chunk)], out))
  return jax.tree.map(lambda *leaves: np.concatenate(leaves), *outputs)
