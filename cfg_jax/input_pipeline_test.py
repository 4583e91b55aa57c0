"""Tests of input_pipeline: the seekable order, host shards, flips and validation."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from cfg_jax import input_pipeline
from cfg_jax import test_configs


def _create(config, process_index=0, process_count=1):
  return input_pipeline.create_dataset(config, process_index=process_index,
                                       process_count=process_count)


@pytest.fixture(scope="module")
def mnist5k():
  return _create(test_configs.with_data())


def _small_images(n=10, seed=0):
  """n random uint8 8x8 RGB images with labels i % 3."""
  x = np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
  return x, np.arange(n) % 3


# Order: deterministic, seekable, sharded.


def test_batches_are_a_function_of_seed_and_step(mnist5k):
  other = _create(test_configs.with_data())
  for step in (0, 1, 39, 1000):  # step 39 crosses the first epoch end (39 * 128 < 5000 < 40 * 128)
    a, b = mnist5k.batch(step, batch_size=128), other.batch(step, batch_size=128)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["label"], b["label"])
  reseeded = _create(test_configs.with_data()).batch(0, batch_size=128)
  config = test_configs.with_data()
  config.seed = 1
  assert not np.array_equal(_create(config).batch(0, batch_size=128)["x"], reseeded["x"])


def test_each_epoch_is_a_permutation():
  ds = input_pipeline.from_arrays(*_small_images(10), num_classes=3, seed=0)
  stream = np.concatenate([ds.global_indices(step, 4) for step in range(5)])
  first, second = stream[:10], stream[10:]
  np.testing.assert_array_equal(np.sort(first), np.arange(10))
  np.testing.assert_array_equal(np.sort(second), np.arange(10))
  assert not np.array_equal(first, second)


def test_stream_resumed_at_step_k_is_the_tail(mnist5k):
  full = [b for _, b in mnist5k.iterate(0, batch_size=128, stop_step=45)]
  resumed = list(mnist5k.iterate(40, batch_size=128, stop_step=45, prefetch=1))
  assert [step for step, _ in resumed] == list(range(40, 45))
  for a, (_, b) in zip(full[40:], resumed):
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["label"], b["label"])
  endless = mnist5k.iterate(3, batch_size=128)
  assert [step for step, _ in itertools.islice(endless, 4)] == [3, 4, 5, 6]
  endless.close()


def test_flips_are_deterministic_mirrors():
  x, labels = _small_images(64)
  plain = input_pipeline.from_arrays(x, labels, num_classes=3, seed=0)
  flipped = input_pipeline.from_arrays(x, labels, num_classes=3, seed=0, random_flip=True)
  a, b = plain.batch(7, batch_size=64)["x"], flipped.batch(7, batch_size=64)["x"]
  np.testing.assert_array_equal(b, flipped.batch(7, batch_size=64)["x"])
  mirrored = np.all(b == a[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(mirrored | np.all(b == a, axis=(1, 2, 3)))
  assert 10 < mirrored.sum() < 54


@pytest.mark.parametrize("process_count", [2, 4])
def test_host_shards_partition_the_global_batch(process_count):
  x, labels = _small_images(50)
  make = lambda p, n: input_pipeline.from_arrays(x, labels, num_classes=3, seed=3,
                                                 random_flip=True, process_index=p,
                                                 process_count=n)
  for step in (0, 6):
    whole = make(0, 1).batch(step, batch_size=16)
    shards = [make(p, process_count).batch(step, batch_size=16) for p in range(process_count)]
    for key in ("x", "label"):
      assert all(len(s[key]) == 16 // process_count for s in shards)
      np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]), whole[key])
    global_indices = make(0, 1).global_indices(step, 16)
    assert len(np.unique(global_indices)) == 16  # rows are distinct examples: shards disjoint


def test_create_dataset_host_shard(mnist5k):
  host = _create(test_configs.with_data(), process_index=1, process_count=2)
  np.testing.assert_array_equal(host.batch(2, batch_size=128)["x"],
                                mnist5k.batch(2, batch_size=128)["x"][64:])


# Validation.


@pytest.fixture
def no_loading(monkeypatch):
  """Fails the test if mnist5k is read: checks must come before any heavy work."""
  def fail(*args, **kwargs):
    raise AssertionError("mnist5k must not be read")
  monkeypatch.setattr(np, "loadtxt", fail)


@pytest.mark.parametrize("data, training_batch, process_count, match", [
    (dict(num_classes=5), 128, 1,
     r"config.data.num_classes=5 but source 'mnist5k' has 10 classes"),
    (dict(image_size=0), 128, 1, r"config.data.image_size=0 is invalid: it must be"),
    (dict(channels=2), 128, 1, r"config.data.channels=2 is invalid: it must be"),
    (dict(), 130, 4, r"config.training.batch_size=130 must be a positive multiple of "
                     r"process_count=4"),
])
def test_config_errors_come_before_loading(no_loading, data, training_batch, process_count,
                                           match):
  config = test_configs.with_data(**data)
  config.training.batch_size = training_batch
  with pytest.raises(ValueError, match=match):
    _create(config, process_count=process_count)


def test_bad_examples():
  x, labels = _small_images(6)
  with pytest.raises(ValueError, match=r"labels in \[0, 2\], outside \[0, "
                                       r"config.data.num_classes=2\)"):
    input_pipeline.from_arrays(x, labels, num_classes=2, seed=0)
  x = x.astype(np.float32)
  x[2, 1, 1, 0] = np.nan
  with pytest.raises(ValueError, match=r"1 NaN or infinite values"):
    input_pipeline.from_arrays(x, labels, num_classes=3, seed=0)


def test_bad_batch_and_flip_requests(mnist5k):
  host = input_pipeline.from_arrays(*_small_images(), num_classes=3, seed=0, process_count=3,
                                    process_index=2)
  with pytest.raises(ValueError, match=r"batch_size=8 must be a positive multiple of "
                                       r"process_count=3"):
    host.batch(0, batch_size=8)
  with pytest.raises(ValueError, match=r"step must be >= 0"):
    mnist5k.batch(-1, batch_size=8)
  with pytest.raises(ValueError, match=r"random_flip=True needs images"):
    _create(test_configs.with_data(source="toy2d", random_flip=True))

