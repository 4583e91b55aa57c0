"""Tests of the sample-quality benchmark: a half-minute --quick run end to end, its flags,
targets."""
import json
import math
import pathlib
import subprocess
import sys

import pytest

from bench import quality

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bench(*flags, timeout=900):
  return subprocess.run([sys.executable, "-m", "bench.quality", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout, check=False)


# A UNet that compiles in seconds (configs/mnist.py at width 8, two levels), and a
# two-step grid at the end of training.
TINY_MODEL = [f"--override=--config.{k}" for k in (
    "model.ch=8", "model.ch_mult=(1,2)", "model.num_head_channels=16", "model.logsnr_emb_ch=0",
    "sampling.num_steps=2", "sampling.w=(0.,)")]


def test_a_quick_run_trains_samples_measures_and_reports(tmp_path):
  workdir = tmp_path / "bq"
  proc = _bench("--quick", "--minutes=0.5", "--samples_per_w=20", "--ws=0,3", "--steps=4",
                f"--workdir={workdir}", "--batch_size=20", "--guidance_interval=-5,1",
                *TINY_MODEL)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  ours = results["training"]["ours"]
  assert [r["minutes"] for r in ours] == [0.5] and ours[0]["step"] > 0
  assert 28 <= ours[0]["seconds"] <= 120  # stopped at the mark, then saved
  assert {(r["sampler"], r["w"]) for r in results["rows"]} == {
      (s, w) for s in quality.SAMPLERS for w in (0., 3.)}
  for row in results["rows"]:
    assert row["ours"]["num_samples"] == 20
    assert all(math.isfinite(row["ours"][k]) for k in ("fid", "inception_score", "accuracy"))
    assert (row["peer"] is not None) == quality.has_peer()
  assert 0. < results["floor"]["accuracy"] <= 1.  # the eval CNN on its held-out digits
  assert "best FID / floor" in results["targets"]
  report = (workdir / "report.md").read_text()
  assert "| 0.5 | stochastic | 3 |" in report and "| real digits |" in report
  assert results["guidance_interval"] == [-5., 1.] and "ours guided for λ in [-5, 1]" in report
  for sampler in quality.SAMPLERS:
    assert (workdir / f"grid_ours_{sampler}_w0.png").stat().st_size > 0
    assert (workdir / f"grid_ours_{sampler}_w3.png").exists()
  assert (workdir / "quality_vs_w.png").stat().st_size > 0
  again = _bench("--minutes=0.5", f"--workdir={workdir}")  # training again would resume
  assert again.returncode == 2 and "already holds a trained benchmark" in again.stderr
  # Measured again, ours alone with one sampler (the eval classifier is cached).
  again = _bench("--quick", "--stage=evaluate", "--report_minutes=0.5", "--no_peer",
                 "--samplers=stochastic", "--ws=3", "--samples_per_w=20", "--steps=4",
                 "--batch_size=20", f"--workdir={workdir}")
  assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  assert [(r["sampler"], r["w"], r["peer"]) for r in results["rows"]] == [("stochastic", 3., None)]


@pytest.mark.parametrize("flags,message", [
    (["--minutes=0"], "--minutes must be a positive number"),
    (["--minutes=5", "--report_minutes=3,2,5"], "--report_minutes must be positive and increasing"),
    (["--minutes=5", "--report_minutes=2,4"], "--report_minutes must end at --minutes=5"),
    (["--ws="], "--ws"),
    (["--samples_per_w=5"], "--samples_per_w must be >= 10"),
    (["--steps=0"], "--steps must be >= 1"),
    (["--config=/nonexistent.py"], "--config=/nonexistent.py does not exist"),
    (["--guidance_interval=2,1"], "--guidance_interval must be lo,hi with lo <= hi"),
    (["--guidance_interval=1"], "--guidance_interval must be lo,hi with lo <= hi"),
    (["--samplers=ddpm"], "--samplers must be distinct names of stochastic, ddim"),
    (["--samplers=ddim,ddim"], "--samplers must be distinct names of stochastic, ddim"),
])
def test_bad_flags_are_named_before_anything_runs(tmp_path, flags, message):
  proc = _bench(*flags, f"--workdir={tmp_path / 'w'}", timeout=60)
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert not (tmp_path / "w").exists()


def test_evaluate_needs_a_trained_workdir(tmp_path):
  proc = _bench("--stage=evaluate", f"--workdir={tmp_path}", timeout=60)
  assert proc.returncode == 2 and "has no training.json" in proc.stderr


def test_evaluate_measures_only_marks_that_were_trained(tmp_path):
  (tmp_path / "training.json").write_text(json.dumps({"report_minutes": [15., 45.]}))
  proc = _bench("--stage=evaluate", "--report_minutes=30", f"--workdir={tmp_path}", timeout=60)
  assert proc.returncode == 2, proc.stderr
  assert f"--report_minutes must be marks --workdir={tmp_path} was trained to (15,45)" in (
      proc.stderr)
  assert sorted(p.name for p in tmp_path.iterdir()) == ["training.json"]


def test_a_trainer_that_exits_before_the_mark_is_reported(tmp_path):
  with pytest.raises(RuntimeError, match=r"cfg_jax.train exited with 1 before minute 1"):
    quality.train_ours(ROOT / "configs" / "mnist.py", tmp_path / "ours", report_minutes=[1.],
                       overrides=["--config.training.p_uncond=2.0"])


def _rows(minutes, fids, accuracy, peer_is=None):
  return [{"minutes": minutes, "sampler": "stochastic", "w": w,
           "ours": {"fid": fid, "accuracy": accuracy[w], "inception_score": 8. + w},
           "peer": peer_is and {"inception_score": peer_is[w]}}
          for w, fid in fids.items()]


def test_targets_follow_the_issue():
  fids = {0.: 10., 1.: 12., 3.: 25.}
  rows = (_rows(15, fids, {0.: 0.9, 1.: 0.96, 3.: 0.97})
          + _rows(45, {0.: 8., 1.: 9., 3.: 15.}, {0.: 0.95, 1.: 0.99, 3.: 0.995},
                  peer_is={0.: 7., 1.: 9.5, 3.: 9.}))
  targets = quality.targets(rows, {"fid": 7.}, [15, 45])
  assert targets["accuracy w=1 at 15 min"]["met"]
  assert not targets["accuracy w=3 at 15 min"]["met"]  # 0.97 < 0.98
  assert targets["accuracy w=1 at 45 min"]["met"] and targets["accuracy w=3 at 45 min"]["met"]
  assert targets["best FID / floor"]["worst"] == pytest.approx(8. / 7.)
  assert targets["FID w=3 / best FID"]["worst"] == pytest.approx(15. / 8.)
  assert targets["FID w=3 / best FID"]["met"]
  assert targets["IS rise between consecutive w, smallest"]["worst"] == pytest.approx(1.)
  assert targets["IS ours - peer, smallest over w"]["worst"] == pytest.approx(-0.5)
  assert not targets["IS ours - peer, smallest over w"]["met"]  # 9 < 9.5 at w = 1
