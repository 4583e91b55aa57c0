"""Tests of the distillation CLI on a toy2d teacher: every phase, resume after a kill, bad inputs."""
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import config_lib
from cfg_jax import distill
from cfg_jax import runs
from cfg_jax import test_configs
from cfg_jax import train

# A distillation config file for the CLI: the toy phases of `_config` (as flags below).
CONFIG_FILE = '''
from cfg_jax import config_lib
def get_config():
  config = config_lib.distill_base_config()
  config.distill.update(w_emb_ch=16, start_steps=4, target_steps=1, stage1_steps=4,
                        round_steps=4)
  config.training.update(batch_size=16, warmup_steps=1, learning_rate=1e-3, log_every=2,
                         checkpoint_every=2, sample_every=1000)
  return config
'''


def _config(**distill_fields):
  config = config_lib.distill_base_config()
  config.distill.update(w_emb_ch=16, start_steps=4, target_steps=1, stage1_steps=4,
                        round_steps=4)
  config.distill.update(distill_fields)
  config.training.update(batch_size=16, warmup_steps=1, learning_rate=1e-3, log_every=2,
                         checkpoint_every=2, sample_every=1000)
  return config


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
  """A v-prediction toy2d teacher, 8 steps."""
  workdir = tmp_path_factory.mktemp("teacher")
  config = test_configs.toy2d(num_steps=8)
  config.diffusion.prediction = "v"
  train.train(config, str(workdir))
  return workdir


def _cli(*args):
  return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True,
                        timeout=600, env={**os.environ, "JAX_PLATFORMS": "cpu"})


def _final_params(workdir):
  """Every phase's final EMA params, as saved."""
  return {phase.name: runs.load_run(workdir / phase.name, step=phase.num_steps).params
          for phase in distill.phases(_config())}


def test_every_phase_trains_and_generate_and_evaluate_take_the_folder(teacher, tmp_path):
  workdir = tmp_path / "distilled"
  assert distill.distill(_config(), str(teacher), str(workdir)) == 0
  record = json.loads((workdir / runs.DISTILL_FILE).read_text())
  assert record["teacher_step"] == 8 and record["teacher_workdir"] == str(teacher)
  for name, steps in (("stage1", 4), ("steps_2", 2), ("steps_1", 1)):
    run = runs.load_run(workdir / name)
    assert run.step == 4 and run.config.model.w_emb_ch == 16
    assert run.config.sampling.num_steps == steps and run.config.sampling.sampler == "ddim"
    assert (workdir / name / "samples" / "step_00000004_w0.png").exists()
    assert list((workdir / name / "tensorboard").iterdir())
  # Stage 1 starts from the teacher's weights: all but the w embedding are the teacher's.
  teacher_params = runs.load_run(teacher).params
  stage1 = runs.load_run(workdir / "stage1", step=2).params
  assert set(stage1) == set(teacher_params) | {"w_emb"}
  # The folder stands for its last phase, sampled in that phase's steps, w an input.
  assert runs.load_run(workdir).config.sampling.num_steps == 1
  done = _cli("cfg_jax.generate", f"--workdir={workdir}", f"--out={tmp_path / 'out'}",
              "--w=0,3", "--per_class=4", "--batch_size=16")
  assert done.returncode == 0, done.stderr[-3000:]
  with np.load(tmp_path / "out" / "w3.npz") as f:
    assert f["points"].shape == (12, 2) and np.all(np.isfinite(f["points"]))
  done = _cli("cfg_jax.evaluate", f"--workdir={workdir}", "--w=0,3", "--num_samples=30",
              "--num_real=300", "--is_splits=2", "--batch_size=16", "--feature_batch_size=32",
              f"--out={tmp_path / 'eval'}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert "T = 1 steps, sampler ddim" in (tmp_path / "eval" / "metrics.md").read_text()
  done = _cli("cfg_jax.generate", f"--workdir={workdir}", f"--out={tmp_path / 'no'}",
              "--w=3", "--per_class=1", "--sampling.sampler=stochastic")
  assert done.returncode == 1 and "A distilled student samples deterministically" in done.stderr
  # Run again: every phase is done, nothing changes.
  before = _final_params(workdir)
  assert distill.distill(_config(), str(teacher), str(workdir)) == 0
  jax.tree.map(np.testing.assert_array_equal, _final_params(workdir), before)


def _stop_within(process, phase_dir, sig):
  """Sends `sig` once the phase's first checkpoint exists; returns the exit code."""
  first_save = phase_dir / "checkpoints" / "2"
  deadline = time.monotonic() + 300
  while not first_save.exists() and process.poll() is None and time.monotonic() < deadline:
    time.sleep(0.002)
  process.send_signal(sig)
  return process.wait()


def test_rounds_killed_or_preempted_midway_resume_bit_for_bit(teacher, tmp_path):
  config_file = tmp_path / "toy_distill.py"
  config_file.write_text(CONFIG_FILE)
  straight, stopped = tmp_path / "straight", tmp_path / "stopped"
  flags = [f"--config={config_file}", f"--teacher_workdir={teacher}",
           "--config.distill.round_steps=40"]
  done = _cli("cfg_jax.distill", *flags, f"--workdir={straight}")
  assert done.returncode == 0, done.stderr[-3000:]
  command = [sys.executable, "-m", "cfg_jax.distill", *flags, f"--workdir={stopped}"]
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert _stop_within(process, stopped / "steps_2", signal.SIGKILL) == -signal.SIGKILL
  checkpointer = checkpointing.Checkpointer(stopped / "steps_2", read_only=True)
  assert checkpointer.latest_step() < 40  # killed within the round
  checkpointer.close()
  assert not (stopped / "steps_1").exists()
  # Resumed, then preempted within the next round: it saves and exits 75.
  process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  assert _stop_within(process, stopped / "steps_1", signal.SIGTERM) == train.PREEMPTED_EXIT_CODE
  checkpointer = checkpointing.Checkpointer(stopped / "steps_1", read_only=True)
  assert 2 <= checkpointer.latest_step() < 40
  checkpointer.close()
  done = _cli("cfg_jax.distill", *flags, f"--workdir={stopped}")
  assert done.returncode == 0, done.stderr[-3000:]
  for name in ("stage1", "steps_2", "steps_1"):
    steps = 4 if name == "stage1" else 40
    jax.tree.map(np.testing.assert_array_equal,
                 runs.load_run(stopped / name, step=steps).params,
                 runs.load_run(straight / name, step=steps).params)


def test_a_sigterm_between_phases_exits_75_before_the_next_and_the_rerun_finishes(
    teacher, tmp_path, monkeypatch):
  workdir = tmp_path / "distilled"
  load_run = runs.load_run

  def load_run_with_sigterm(path, **kwargs):
    """Stage 1's weights load as the next round's teacher; a SIGTERM arrives meanwhile."""
    if os.path.basename(str(path)) == "stage1":
      os.kill(os.getpid(), signal.SIGTERM)
    return load_run(path, **kwargs)

  monkeypatch.setattr(runs, "load_run", load_run_with_sigterm)
  previous = signal.signal(signal.SIGTERM, lambda *_: None)  # the test outlives a lost SIGTERM
  try:
    exit_code = distill.distill(_config(), str(teacher), str(workdir))
  finally:
    signal.signal(signal.SIGTERM, previous)
    monkeypatch.setattr(runs, "load_run", load_run)
  assert exit_code == train.PREEMPTED_EXIT_CODE
  assert runs.load_run(workdir / "stage1", step=4).step == 4
  assert not (workdir / "steps_2").exists()
  assert distill.distill(_config(), str(teacher), str(workdir)) == 0
  assert runs.load_run(workdir).step == 4


def _workdir_with_config(tmp_path, config):
  tmp_path.mkdir(parents=True, exist_ok=True)
  config_files.save_config(tmp_path, config)
  return tmp_path


@pytest.mark.parametrize("change,message", [
    (lambda c: c.diffusion.update(prediction="eps"), "predicts 'eps'; distillation needs a teacher"),
    (lambda c: c.model.update(w_emb_ch=16), "holds a distilled student"),
])
def test_a_teacher_that_cannot_be_distilled_is_refused_before_anything_runs(tmp_path, change,
                                                                           message):
  config = test_configs.toy2d()
  config.diffusion.prediction = "v"
  change(config)
  teacher = _workdir_with_config(tmp_path / "teacher", config)
  with pytest.raises(ValueError, match=message):
    distill.distill(_config(), str(teacher), str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()


def test_a_classifier_teacher_is_refused(tmp_path):
  teacher = _workdir_with_config(tmp_path / "teacher", test_configs.tiny_model("classifier"))
  with pytest.raises(ValueError, match="holds a classifier; the teacher is a diffusion model"):
    distill.distill(_config(), str(teacher), str(tmp_path / "out"))


@pytest.mark.parametrize("fields,message", [
    (dict(start_steps=6, target_steps=4), r"start_steps=6 must be config.distill.target_steps=4 "
                                          r"times a power of two"),
    (dict(start_steps=12, target_steps=4), "times a power of two"),
    (dict(w_min=2., w_max=2.), r"w_min=2.0 must be below config.distill.w_max=2.0"),
    (dict(w_min=-3.), r"config.distill.w_min=-3.0 is invalid"),
    (dict(w_emb_ch=0), r"config.distill.w_emb_ch=0 is invalid: it must be an even int >= 2"),
])
def test_bad_distillation_configs_get_one_line_errors_before_compiling(tmp_path, fields, message):
  config = _config(**fields)
  with pytest.raises(ValueError, match=message):
    config_lib.validate_distill(config)
  config_file = tmp_path / "bad.py"
  config_file.write_text(CONFIG_FILE)
  flags = [f"--config.distill.{k}={v}" for k, v in fields.items()]
  done = _cli("cfg_jax.distill", f"--config={config_file}", f"--teacher_workdir={tmp_path}",
              f"--workdir={tmp_path / 'out'}", *flags)
  assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
      "cfg_jax.distill: error: config.distill."), done.stderr[-2000:]
  assert not (tmp_path / "out").exists()


def test_resuming_with_another_teacher_is_refused(teacher, tmp_path):
  workdir = tmp_path / "distilled"
  config = _config(stage1_steps=2, start_steps=1, target_steps=1)
  assert distill.distill(config, str(teacher), str(workdir)) == 0
  other_config = test_configs.toy2d(num_steps=2)
  other_config.diffusion.prediction = "v"
  other_config.model.mlp_hidden = 32
  train.train(other_config, str(tmp_path / "other"))
  with pytest.raises(ValueError, match=r"distils the teacher in .*; --teacher_workdir=.* holds "
                                       r"another model"):
    distill.distill(config, str(tmp_path / "other"), str(workdir))
