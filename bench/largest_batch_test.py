"""Tests of the largest-batch search."""
import pytest

from bench import largest_batch


@pytest.mark.parametrize("largest", [0, 4, 36, 100, 400])
@pytest.mark.parametrize("guess", [0, 36, 37, 1000])
def test_largest_fitting_finds_the_largest_batch_from_any_guess(largest, guess):
  calls = []

  def fits(batch):
    calls.append(batch)
    return batch <= largest

  found = largest_batch.largest_fitting(fits, guess, step=4, cap=256)
  assert found == min(largest, 256)
  assert all(b % 4 == 0 and 4 <= b <= 256 for b in calls)
  if guess == largest == 36:
    assert len(calls) == 2  # a right guess costs two compiles: it, and one step more
