"""Tests of the checkpointer: read-only readers."""
import os

import jax
import pytest

from cfg_jax import checkpointing
from cfg_jax import runs
from cfg_jax import train
from cfg_jax import train_test


def _tree(folder):
  """Every file and folder under `folder` with its size and modification time."""
  out = {}
  for root, dirs, names in os.walk(folder):
    for name in dirs + names:
      path = os.path.join(root, name)
      stat = os.stat(path)
      out[os.path.relpath(path, folder)] = (stat.st_size if name in names else None,
                                             stat.st_mtime_ns)
  return out


def test_a_reader_never_deletes_the_trainers_in_flight_save(tmp_path):
  train.train_and_evaluate(train_test.toy_config(num_steps=8), str(tmp_path))
  in_flight = tmp_path / "checkpoints" / "12.orbax-checkpoint-tmp-1795397156"
  (in_flight / "state").mkdir(parents=True)
  (in_flight / "state" / "_METADATA").write_text("{}")
  before = _tree(tmp_path)
  run = runs.load_run(tmp_path)
  checkpointer = checkpointing.Checkpointer(tmp_path, read_only=True)
  assert checkpointer.steps() == [4, 8]
  checkpointer.close()
  assert run.step == 8
  assert _tree(tmp_path) == before


def test_a_reader_of_a_run_without_checkpoints_creates_nothing(tmp_path):
  train.train_and_evaluate(train_test.toy_config(num_steps=4), str(tmp_path / "run"))
  (tmp_path / "run" / "checkpoints").rename(tmp_path / "elsewhere")
  with pytest.raises(FileNotFoundError, match=r"--workdir=.*run has no checkpoint yet"):
    runs.load_run(tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()
