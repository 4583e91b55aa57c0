"""The sample CLI on a tiny trained run: grids and npz per w, guidance interval, errors."""
import subprocess
import sys

import numpy as np

from cfg_jax import train
from cfg_jax import train_test


def _sample(workdir, out, *flags):
  return subprocess.run([sys.executable, "-m", "cfg_jax.sample", f"--workdir={workdir}",
                         f"--out={out}", "--steps=8", "--batch_size=16", *flags],
                        capture_output=True, text=True, timeout=600)


def test_sample_cli_writes_grids_and_npz_and_interval_outside_equals_w0(tmp_path):
  train.train_and_evaluate(train_test.toy_config(num_steps=4), str(tmp_path / "run"))
  done = _sample(tmp_path / "run", tmp_path / "out", "--w=0,1,3", "--per_class=5")
  assert done.returncode == 0, done.stderr[-3000:]
  for w in ("0", "1", "3"):
    assert (tmp_path / "out" / f"w{w}.png").stat().st_size > 0
    with np.load(tmp_path / "out" / f"w{w}.npz") as f:
      assert f["points"].shape == (15, 2)
      np.testing.assert_array_equal(f["labels"], np.repeat(np.arange(3), 5))
  # A guidance interval that holds no step of the schedule is plain w = 0 sampling.
  done = _sample(tmp_path / "run", tmp_path / "none", "--w=3", "--per_class=5",
                 "--guidance_interval=30,40")
  assert done.returncode == 0, done.stderr[-3000:]
  with np.load(tmp_path / "none" / "w3.npz") as a, np.load(tmp_path / "out" / "w0.npz") as b:
    np.testing.assert_array_equal(a["points"], b["points"])


def test_sample_cli_rejects_bad_inputs(tmp_path):
  train.train_and_evaluate(train_test.toy_config(num_steps=4), str(tmp_path / "run"))
  done = _sample(tmp_path / "run", tmp_path / "out", "--w=nan", "--per_class=1")
  assert done.returncode != 0 and "--w must be finite" in done.stderr
  done = _sample(tmp_path / "run", tmp_path / "out", "--labels=0,7")
  assert done.returncode != 0 and "--labels must be" in done.stderr
  assert not (tmp_path / "out").exists()
