"""Tests of the distillation benchmark: a tiny teacher distilled and measured end to end."""
import json
import pathlib
import subprocess
import sys

import pytest

from bench import distillation
from cfg_jax import test_configs
from cfg_jax import train

ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY = ["--config.distill.stage1_steps=2", "--config.distill.round_steps=2",
        "--config.distill.start_steps=4", "--config.distill.target_steps=2",
        "--config.distill.w_emb_ch=16", "--config.training.batch_size=8",
        "--config.training.warmup_steps=1", "--config.training.checkpoint_every=2",
        "--config.training.sample_every=1000"]


def _bench(*flags):
  return subprocess.run([sys.executable, "-m", "bench.distillation", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=900, check=False)


def test_a_tiny_teacher_is_distilled_sampled_timed_and_reported(tmp_path):
  config = test_configs.preset("mnist")
  config.model.update(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                      num_heads=1, num_head_channels=-1, logsnr_emb_ch=0)
  config.training.update(num_steps=2, batch_size=8, warmup_steps=1, checkpoint_every=2,
                         sample_every=1000)
  config.sampling.update(num_steps=2, w=(0.,))  # the grid written at the end: seconds
  train.train(config, str(tmp_path / "teacher"))
  workdir = tmp_path / "bd"
  proc = _bench(f"--teacher_workdir={tmp_path / 'teacher'}", f"--workdir={workdir}",
                "--quick", "--samples_per_w=20", "--ws=0,3", "--batch_size=20", "--repeats=1",
                "--teacher_steps=4,8",
                *[f"--override={flag}" for flag in TINY])
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  results = json.loads((workdir / "results.json").read_text())
  names = ["teacher_4", "teacher_8", "student_2"]
  assert [r["sampler"] for r in results["rows"]] == [n for n in names for _ in (0, 3)]
  for row in results["rows"]:
    assert row["num_samples"] == 20 and row["batch_seconds"] > 0
    assert row["passes"] == {"teacher_4": 8, "teacher_8": 16, "student_2": 2}[
        row["sampler"]]
  report = (workdir / "report.md").read_text()
  assert "| student_2 | 2 | 2 | 3 |" in report and "| real digits |" in report
  assert (workdir / "grid_student_2_w3.png").stat().st_size > 0


def test_targets_follow_the_issue():
  def row(sampler, w, accuracy, fid, seconds=1.):
    return {"sampler": sampler, "w": w, "accuracy": accuracy, "fid": fid,
            "batch_seconds": seconds}
  rows = [row("teacher_128", 1., 0.99, 10., 32.), row("teacher_128", 3., 1.0, 20., 32.),
          row("student_8", 1., 0.985, 11.9, 1.), row("student_8", 3., 0.98, 25.),
          row("student_4", 1., 0.97, 15.), row("student_4", 3., 0.96, 30.)]
  t = distillation.targets(rows)
  assert t["accuracy: teacher 128 - student 8, w=1"]["met"]
  assert not t["accuracy: teacher 128 - student 8, w=3"]["met"]  # 2 points
  assert t["accuracy: teacher 128 - student 4, w=1"]["met"]
  assert not t["accuracy: teacher 128 - student 4, w=3"]["met"]  # 4 points
  assert t["FID: student 8 / teacher 128, w=1"]["met"]
  assert not t["FID: student 8 / teacher 128, w=3"]["met"]  # 1.25x
  assert t["speed-up: teacher 128 / student 8"]["worst"] == pytest.approx(32.)


@pytest.mark.parametrize("flags,message", [
    (["--teacher_workdir=/nonexistent"], "is not a training run"),
    (["--teacher_workdir=.", "--samples_per_w=5"], "--samples_per_w must be >= 10"),
    (["--teacher_workdir=.", "--teacher_steps=0"], "--teacher_steps must be"),
])
def test_bad_flags_are_named(tmp_path, flags, message):
  proc = _bench(*flags, f"--workdir={tmp_path / 'w'}")
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr
  assert not (tmp_path / "w").exists()
