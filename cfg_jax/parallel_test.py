"""Tests of the data-parallel helpers: batched application over the devices."""
import jax
import numpy as np
import pytest

from cfg_jax import parallel


def test_apply_in_batches_pads_the_last_batch_and_drops_the_padding():
  x = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
  calls = []

  def fn(k, batch):
    calls.append((k, batch.shape))
    return {"double": 2 * batch, "first_plus_k": batch[:, 0] + k}

  out = parallel.apply_in_batches(fn, x, batch_size=4)
  assert calls == [(0, (4, 3)), (1, (4, 3)), (2, (4, 3))]  # one shape: one compile
  np.testing.assert_array_equal(out["double"], 2 * x)
  np.testing.assert_array_equal(out["first_plus_k"], x[:, 0] + np.repeat([0, 1, 2], [4, 4, 2]))
  assert isinstance(out["double"], np.ndarray)


def test_apply_in_batches_of_a_jitted_function_equals_one_call_on_all_rows():
  x = np.random.default_rng(0).normal(size=(7, 2, 2)).astype(np.float32)
  fn = jax.jit(lambda batch: (batch.sum(axis=(1, 2)), batch * 3))
  features, tripled = parallel.apply_in_batches(lambda k, batch: fn(batch), x, batch_size=3)
  expected = fn(x)
  np.testing.assert_allclose(features, expected[0], rtol=1e-6)
  np.testing.assert_allclose(tripled, expected[1], rtol=1e-6)


def test_apply_in_batches_refuses_an_empty_array():
  with pytest.raises(ValueError, match="at least one row"):
    parallel.apply_in_batches(lambda k, batch: batch, np.zeros((0, 2)), batch_size=4)
