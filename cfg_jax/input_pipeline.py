"""Training data: a deterministic, seekable stream of global batches, sharded over hosts.

The examples come from `data_sources` (mnist5k, toy2d, folders, tfds) or from arrays
(`from_arrays`). Images come out as float32 NHWC in [-1, 1]; other data (toy2d's points)
as float32, unchanged.

Order. Example positions form one endless stream in which epoch e is the permutation
`np.random.default_rng([seed, 0, e])` of the dataset; the global batch of training step
`step` is positions [step * B, (step + 1) * B) of that stream, across epoch ends. So a
batch is a pure function of (seed, step, B) and a resumed run sees exactly the batches
of an uninterrupted one. Flips are drawn from `default_rng([seed, 1, step])` for the
whole global batch, so they do not depend on the host layout either.

Hosts. Host p of P reads rows [p * B / P, (p + 1) * B / P) of each global batch; a
source too large for memory decodes only those rows (see `data_sources`).
"""
from __future__ import annotations

import collections
from collections.abc import Iterator
import concurrent.futures
import functools
import itertools

import jax
import ml_collections
import numpy as np

from cfg_jax import config_lib
from cfg_jax import data_sources

Batch = dict[str, np.ndarray]


class Dataset:
  """Examples read in a deterministic, seekable order; `batch` returns this host's rows.

  Attributes:
    num_classes: labels lie in [0, num_classes).
    example_shape: the shape of one example, (H, W, C) or (2,).
  """

  def __init__(self, read: data_sources.Reader, size: int, *, num_classes: int,
               example_shape: tuple[int, ...], seed: int, random_flip: bool = False,
               process_index: int = 0, process_count: int = 1, name: str = "dataset"):
    """Wraps `read(indices)` over dataset indices [0, size); see `data_sources.Reader`."""
    if size < 1:
      raise ValueError(f"source {name!r} has no examples.")
    if seed < 0:
      raise ValueError(f"config.seed must be >= 0 (it seeds numpy's SeedSequence), got {seed}.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index must lie in [0, process_count={process_count}), "
                       f"got {process_index}.")
    if random_flip and len(example_shape) != 3:
      raise ValueError(f"config.data.random_flip=True needs images, but source {name!r} has "
                       f"examples of shape {example_shape}.")
    self.num_classes = num_classes
    self.example_shape = tuple(example_shape)
    self.seed = seed
    self.random_flip = random_flip
    self.process_index = process_index
    self.process_count = process_count
    self.name = name
    self._read = read
    self._size = size

  def __len__(self) -> int:
    return self._size

  def global_indices(self, step: int, batch_size: int) -> np.ndarray:
    """Dataset indices [batch_size] of the global batch of `step`, the same on every host."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self._size)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):  # at most a few: a batch spans epochs only at their ends
      at = epochs == epoch
      indices[at] = _epoch_permutation(self.seed, int(epoch), self._size)[offsets[at]]
    return indices

  def batch(self, step: int, *, batch_size: int) -> Batch:
    """This host's rows of the global batch of `step`.

    Args:
      step: the training step; any step can be read at any time, in any order.
      batch_size: the global batch size, a multiple of process_count.

    Returns:
      {"x": float32 [batch_size / process_count, *example_shape],
       "label": int32 [batch_size / process_count]}.
    """
    _check_batch_split(batch_size, self.process_count, "batch_size")
    local = batch_size // self.process_count
    rows = slice(self.process_index * local, (self.process_index + 1) * local)
    x, labels = self._read(self.global_indices(step, batch_size)[rows])
    data_sources.check_examples(x, labels, self.num_classes, self.example_shape, self.name)
    x = _to_float(x)
    if self.random_flip:
      rng = np.random.default_rng([self.seed, data_sources.FLIP_STREAM, step])
      flip = (rng.random(batch_size) < 0.5)[rows]
      x[flip] = x[flip, :, ::-1]
    return {"x": x, "label": labels.astype(np.int32)}

  def iterate(self, start_step: int = 0, *, batch_size: int, stop_step: int | None = None,
              prefetch: int = 2) -> Iterator[tuple[int, Batch]]:
    """Yields (step, batch(step)) for step = start_step, start_step + 1, ... < stop_step.

    Runs forever when stop_step is None. A background thread reads up to `prefetch`
    batches ahead of the one being consumed; closing the iterator drops them.
    """
    steps = itertools.count(start_step) if stop_step is None else range(start_step, stop_step)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    pending = collections.deque()
    try:
      for step in steps:
        pending.append((step, pool.submit(self.batch, step, batch_size=batch_size)))
        if len(pending) > prefetch:
          step, future = pending.popleft()
          yield step, future.result()
      while pending:
        step, future = pending.popleft()
        yield step, future.result()
    finally:
      pool.shutdown(wait=False, cancel_futures=True)


def create_dataset(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                   process_count: int | None = None) -> Dataset:
  """Validates `config.data` and the host split of the batch, then loads the source.

  Args:
    config: the run config; reads `config.data`, `config.seed` and
      `config.training.batch_size` (the global batch, split evenly over hosts).
    process_index: this host, default `jax.process_index()`.
    process_count: the number of hosts, default `jax.process_count()`.

  Returns:
    The `Dataset`; every check that needs no data has passed before any is read.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  _check_batch_split(config.training.batch_size, process_count, "config.training.batch_size")
  shape = config_lib.example_shape(config)
  read, size = data_sources.open_source(config, shape)
  return Dataset(read, size, num_classes=config.data.num_classes, example_shape=shape,
                 seed=config.seed, random_flip=config.data.random_flip,
                 process_index=process_index, process_count=process_count,
                 name=config.data.source)


def from_arrays(x: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int,
                random_flip: bool = False, process_index: int = 0, process_count: int = 1,
                name: str = "arrays") -> Dataset:
  """A `Dataset` over in-memory examples: uint8 images in [0, 255] or float data as is."""
  read, size = data_sources.array_reader(x, labels, num_classes, x.shape[1:], name)
  return Dataset(read, size, num_classes=num_classes, example_shape=x.shape[1:], seed=seed,
                 random_flip=random_flip, process_index=process_index,
                 process_count=process_count, name=name)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
  """The order of epoch `epoch`; cached because consecutive batches share an epoch."""
  perm = np.random.default_rng([seed, data_sources.ORDER_STREAM, epoch]).permutation(size)
  perm.flags.writeable = False
  return perm


def _check_batch_split(batch_size: int, process_count: int, field: str) -> None:
  if process_count < 1 or batch_size < 1 or batch_size % process_count:
    raise ValueError(f"{field}={batch_size} must be a positive multiple of "
                     f"process_count={process_count}: each host reads batch_size / "
                     f"process_count rows of every global batch.")


def _to_float(x: np.ndarray) -> np.ndarray:
  """uint8 pixels to float32 in [-1, 1]; float data unchanged (a fresh float32 copy)."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 127.5 - 1.
  return x.astype(np.float32)
