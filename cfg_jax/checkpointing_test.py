"""Tests of the checkpointer: read-only readers, the causes of a failed write, signatures."""
import errno
import os
import re

import jax
import pytest

from cfg_jax import checkpointing
from cfg_jax import runs
from cfg_jax import test_configs
from cfg_jax import train


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
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path))
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
  train.train(test_configs.toy2d(num_steps=4), str(tmp_path / "run"))
  (tmp_path / "run" / "checkpoints").rename(tmp_path / "elsewhere")
  with pytest.raises(FileNotFoundError, match=r"--workdir=.*run has no checkpoint yet"):
    runs.load_run(tmp_path / "run")
  assert not (tmp_path / "run" / "checkpoints").exists()


_VANISHED = "/w/checkpoints/280.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/a1"


@pytest.mark.parametrize("error,cause", [
    (FileNotFoundError(errno.ENOENT, "No such file or directory", _VANISHED),
     r"its temporary folder vanished while the save was in progress: another process deleted "
     r"it .*\); stop that process, then rerun"),
    (ValueError(f'NOT_FOUND: Error writing "ema_params/.zarray" in OCDBT database at local file '
                f'"{_VANISHED}" [tensorstore_spec=\'{{"driver": "zarr"}}\']'),
     r"its temporary folder vanished .*ocdbt.process_0/d/a1\"\)\. Earlier"),
    (OSError(errno.ENOSPC, "No space left on device"),
     r"the disk is full \(OSError: \[Errno 28\] No space left on device\).*; free disk space,"),
    (OSError(errno.EROFS, "Read-only file system"),
     r"the folder is read-only or not writable .*; fix its permissions, or use another --workdir"),
    (PermissionError(errno.EACCES, "Permission denied"), r"read-only or not writable"),
    (RuntimeError("the network went away"),
     r"the write failed \(RuntimeError: the network went away\).*; fix the cause, then rerun"),
])
def test_a_failed_write_names_its_cause(tmp_path, monkeypatch, error, cause):
  checkpointer = checkpointing.Checkpointer(tmp_path, max_to_keep=2)
  wrapper = RuntimeError("orbax's wrapper")  # the filesystem's error reaches us as a cause
  wrapper.__cause__ = error

  def failing_save(self, step, *args, **kwargs):
    raise wrapper

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, "save", failing_save)
  with pytest.raises(checkpointing.CheckpointWriteError) as raised:
    checkpointer.save(290, {"x": jax.numpy.zeros(2)}, {})
  checkpointer.close()
  message = str(raised.value)
  assert message.startswith(f"Could not write the checkpoint of step 290 to {tmp_path}")
  assert "\n" not in message and "Earlier checkpoints are intact (latest complete: step None)" in (
      message)
  assert "tensorstore_spec" not in message
  assert re.search(cause, message), message


# Written before the field existed: λ's embedding width was ch (0); no network took w (0).
@pytest.mark.parametrize("field", ["logsnr_emb_ch", "w_emb_ch"])
def test_a_checkpoint_from_before_a_field_existed_matches_its_old_value(field):
  config = test_configs.tiny_model("unet")
  saved = checkpointing.signature(config)
  del saved[f"model.{field}"]
  checkpointing.check_signature(saved, checkpointing.signature(config), "old")
  config.model[field] = 32
  with pytest.raises(checkpointing.ModelMismatchError,
                     match=rf"config.model.{field}: checkpoint has 0, config has 32"):
    checkpointing.check_signature(saved, checkpointing.signature(config), "old")
  config.model.label_emb_std = 0.5  # how the table starts: not part of the signature
  assert "model.label_emb_std" not in checkpointing.signature(config)
