"""Tests of the evaluate CLI: a toy2d run, the checkpoint it reads, bad flags."""
import csv
import os
import subprocess
import sys

from cfg_jax import evaluation
from cfg_jax import test_configs
from cfg_jax import train

WS = (0., 0.1, 0.3, 0.5, 1., 2., 4.)


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "cfg_jax.evaluate", *args], capture_output=True,
                        text=True, timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def test_cli_on_a_toy2d_run_writes_a_row_per_w(tmp_path):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path))
  proc = _cli(f"--workdir={tmp_path}", "--w=" + ",".join(f"{w:g}" for w in WS),
              "--num_samples=30", "--sampling.num_steps=4", "--num_real=300", "--is_splits=2",
              "--batch_size=16", "--feature_batch_size=32")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = tmp_path / "eval"
  with open(out / "metrics.csv") as f:
    rows = list(csv.DictReader(f))
  assert [float(r["w"]) for r in rows] == list(WS)
  for row in rows:
    assert row["classifier_scale"] == "" and int(row["num_samples"]) == 30
    assert float(row["fid"]) >= 0 and float(row["inception_score"]) >= 1
    assert 0 <= float(row["precision"]) <= 1 and 0 <= float(row["accuracy"]) <= 1
  table = (out / "metrics.md").read_text()
  assert sum(line.startswith(f"| checkpoint | {w:g} | – |") for w in WS
             for line in table.splitlines()) == 7
  assert (out / "fid_vs_is.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  assert len(list((tmp_path / "fid_stats").glob("points-*.npz"))) == 1
  assert "| w | classifier scale | FID | IS |" in proc.stdout


def test_step_chooses_the_checkpoint_and_the_cli_lists_the_steps_there_are(tmp_path):
  train.train(test_configs.toy2d(num_steps=8), str(tmp_path))
  evaluation.evaluate(tmp_path, ws=[1.], num_samples=12, spec_overrides={"num_steps": 2}, step=4, num_real=60, k=2,
                    is_splits=2, batch_size=12, feature_batch_size=12)
  assert f"# Evaluation of {tmp_path.name} at step 4" in (
      tmp_path / "eval" / "metrics.md").read_text()
  proc = _cli(f"--workdir={tmp_path}", "--step=5", "--w=1", "--num_samples=12", "--sampling.num_steps=2",
              "--num_real=60", "--k=2", "--is_splits=2")
  assert proc.returncode == 1 and proc.stderr.splitlines()[-1] == (
      f"cfg_jax.evaluate: error: --step=5: {tmp_path / 'checkpoints'} has no checkpoint of that "
      f"step; it has steps 4, 8."), proc.stderr[-2000:]


def test_cli_refuses_bad_flags_before_loading_anything(tmp_path):
  proc = _cli(f"--workdir={tmp_path}", "--w=0,nan", "--num_samples=10")
  assert proc.returncode != 0 and "--w must be finite" in proc.stderr
