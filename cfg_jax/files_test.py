"""Atomic writes: a write that fails half-way never leaves a partial file under its name."""
import errno

from etils import epath
import ml_collections
import numpy as np
import pytest

from cfg_jax import config_files
from cfg_jax import files
from cfg_jax import runs
from cfg_jax import visualization
from cfg_jax.evaluation import report

PATH_CLASS = type(epath.Path("/"))


@pytest.fixture
def full_disk(monkeypatch):
  """Makes every epath write put down half its data, then fail as a full disk does."""

  def write_half(self, data, *args, **kwargs):
    data = data.encode() if isinstance(data, str) else data
    with open(self, "wb") as f:
      f.write(data[:len(data) // 2])
    raise OSError(errno.ENOSPC, "No space left on device", str(self))

  def apply():
    monkeypatch.setattr(PATH_CLASS, "write_bytes", write_half)
    monkeypatch.setattr(PATH_CLASS, "write_text", write_half)

  return apply


def _contents(folder):
  return {p.name: p.read_bytes() for p in sorted(epath.Path(folder).iterdir())}


def test_a_write_that_fails_half_way_keeps_the_previous_version_and_no_temporary_file(
    tmp_path, full_disk):
  path = tmp_path / "out.bin"
  files.write_bytes_atomic(path, b"first version")
  files.write_text_atomic(tmp_path / "new.txt", "x" * 100)
  full_disk()
  with pytest.raises(OSError, match="No space left"):
    files.write_bytes_atomic(path, b"second, longer version")
  with pytest.raises(OSError, match="No space left"):
    files.write_text_atomic(tmp_path / "absent.txt", "never complete")
  assert _contents(tmp_path) == {"new.txt": b"x" * 100, "out.bin": b"first version"}


def _samples(out, value):
  x = np.full((6, 2), value, np.float32)
  runs.write_sample_files(x, np.arange(6) % 3, epath.Path(out), "w1", num_classes=3)


def _metrics(out, value):
  rows = [dict(w=w, classifier_scale=None, fid=value + w, inception_score=2. + w,
               inception_score_std=0.1, precision=0.5, recall=0.4, accuracy=0.9,
               num_samples=4) for w in (0., 1.)]
  report.write_results(rows, out, title=f"run {value}")


def _config(out, value):
  config_files.save_config(out, ml_collections.ConfigDict({"seed": value}))


def _grid(out, value):
  visualization.save_sample_picture(np.full((3, 4, 4, 1), value / 10, np.float32), np.arange(3),
                             epath.Path(out) / "grid.png", num_classes=3)


@pytest.mark.parametrize("write", [_samples, _metrics, _config, _grid])
def test_every_cli_output_keeps_its_previous_version_when_the_disk_fills(tmp_path, full_disk,
                                                                         write):
  write(tmp_path, 1)
  before = _contents(tmp_path)
  full_disk()
  with pytest.raises(OSError, match="No space left"):
    write(tmp_path, 7)
  assert _contents(tmp_path) == before


def test_is_local_tells_local_paths_from_object_stores(tmp_path):
  assert files.is_local(tmp_path) and files.is_local("runs/mnist")
  assert not files.is_local("gs://bucket/run") and not files.is_local(epath.Path("s3://b/r"))
