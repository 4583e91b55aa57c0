"""Tests of post-hoc EMA on real runs: reconstruction against a tracked width, the CLIs."""
import subprocess
import sys

import jax
import numpy as np
import pytest

from cfg_jax import evaluation
from cfg_jax import posthoc_ema
from cfg_jax import runs
from cfg_jax import test_configs
from cfg_jax import train
from cfg_jax import train_test

STEPS = 120


def _flat(tree):
  return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


def _power_run(workdir, sigma_rels):
  config = test_configs.toy2d(num_steps=STEPS, ema="power", ema_sigma_rels=sigma_rels,
                              ema_snapshot_every=10, checkpoint_every=STEPS,
                              learning_rate=3e-3)
  assert train.train(config, str(workdir)) == 0
  return workdir


@pytest.fixture(scope="module")
def power_runs(tmp_path_factory):
  """The same run twice (the EMAs do not change the training): one tracks σ_rel 0.05 and
  0.15, the other 0.10."""
  root = tmp_path_factory.mktemp("posthoc")
  return _power_run(root / "two", (0.05, 0.15)), _power_run(root / "tracked", (0.10,))


def test_a_reconstructed_width_matches_the_same_width_tracked_in_training(power_runs):
  two, tracked = power_runs
  _, _, state = train_test.final_state(tracked)
  np.testing.assert_array_equal(_flat(train_test.final_state(two)[2]["params"]),
                                _flat(state["params"]))
  before = train_test.files_under(two)
  folders = posthoc_ema.reconstruct(two, [0.1, 0.05])
  # Nothing of the run changed: only the new folders were written.
  after = train_test.files_under(two)
  assert {k: v for k, v in after.items() if not k.startswith("posthoc_ema/")} == before
  assert sorted(p.name for p in (two / "posthoc_ema").iterdir()) == [
      "sigma_rel_0.05", "sigma_rel_0.1"]
  assert folders[0.1] == two / "posthoc_ema" / "sigma_rel_0.1"

  run = runs.load_run(two, ema="sigma_rel_0.1")
  assert run.step == STEPS
  rebuilt, direct, live = _flat(run.params), _flat(state["ema_params"]), _flat(state["params"])
  # The error relative to the EMA's distance from the live weights: 0.08% here, from 12
  # snapshots of two widths of a 120-step run.
  error = np.linalg.norm(rebuilt - direct) / np.linalg.norm(direct - live)
  assert error < 0.01, error
  # A width the run tracked comes back as its last snapshot.
  np.testing.assert_allclose(_flat(runs.load_run(two, ema="sigma_rel_0.05").params),
                             _flat(train_test.final_state(two)[2]["ema_params"]),
                             rtol=1e-5, atol=1e-6)
  # An earlier snapshot step, from the snapshots up to it; asking again keeps what is there.
  posthoc_ema.reconstruct(two, [0.1], step=60)
  kept = train_test.files_under(two / "posthoc_ema")
  posthoc_ema.reconstruct(two, [0.1], step=60)
  assert train_test.files_under(two / "posthoc_ema") == kept
  assert runs.load_run(two, ema="sigma_rel_0.1", step=60).step == 60


def _cli(module, *flags):
  return subprocess.run([sys.executable, "-m", module, *flags], capture_output=True, text=True,
                        timeout=600)


def test_bad_widths_and_runs_without_snapshots_are_one_line_errors(power_runs, tmp_path):
  two, _ = power_runs
  constant = tmp_path / "constant"
  train.train(test_configs.toy2d(num_steps=4), str(constant))
  before = train_test.files_under(constant)
  for flags, message in [
      ((f"--workdir={two}", "--sigma_rel=0.3"),
       "--sigma_rel must be a non-empty list of widths in (0, 0.2887), got [0.3]."),
      ((f"--workdir={constant}", "--sigma_rel=0.1"),
       "it was trained with config.training.ema='constant'; train with "
       "--config.training.ema=power to keep them."),
      ((f"--workdir={two}", "--sigma_rel=0.1", "--step=55"),
       "has no snapshot of that step; it has steps 10, 20,")]:
    proc = _cli("cfg_jax.posthoc_ema", *flags)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
  assert train_test.files_under(constant) == before

  for flags, message in [(("--ema=sigma_0.1",), "--ema='sigma_0.1' is invalid: it must be "
                           "'sigma_rel_<width>'"),
                         (("--ema=sigma_rel_0.2",), "reconstruct it with python -m "
                          "cfg_jax.posthoc_ema"),
                         (("--ema=sigma_rel_0.1,sigma_rel_0.05",), "generate samples one EMA")]:
    proc = _cli("cfg_jax.generate", f"--workdir={two}", "--num_samples=3", "--w=0",
                f"--out={tmp_path / 'samples'}", *flags)
    assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
  assert not (tmp_path / "samples").exists()


def test_evaluate_compares_reconstructed_widths(power_runs, tmp_path):
  two, _ = power_runs
  posthoc_ema.reconstruct(two, [0.05, 0.1])
  proc = _cli("cfg_jax.posthoc_ema", f"--workdir={two}", "--sigma_rel=0.1")
  assert proc.returncode == 0 and "--ema=sigma_rel_0.1: " in proc.stdout, proc.stderr[-2000:]
  rows = evaluation.evaluate(
      two, ws=[0., 1.], num_samples=30, k=3, is_splits=2, out=tmp_path / "eval",
      emas=["sigma_rel_0.05", "sigma_rel_0.1"])
  assert [(r["ema"], r["w"]) for r in rows] == [
      ("sigma_rel_0.05", 0.), ("sigma_rel_0.05", 1.), ("sigma_rel_0.1", 0.), ("sigma_rel_0.1", 1.)]
  assert rows[0]["fid"] != rows[2]["fid"]  # other weights, other samples
  assert "| sigma_rel_0.1 | 1 | – |" in (tmp_path / "eval" / "metrics.md").read_text()
