"""Data parallelism: one mesh axis `data` over every device of every host.

The batch is sharded over `data` and the state replicated; `jax.jit` (GSPMD) then runs
each device on its rows and turns batch means into all-reduces, which is what
`jax.pmap` with `lax.pmean(..., "data")` does, without pmap's per-device programs.
"""
from __future__ import annotations

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
