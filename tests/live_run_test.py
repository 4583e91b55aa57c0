"""A run that others read while it trains: samples and restores never disturb it.

The trainer (toy2d through the CLI) saves every few steps, so that a save is in progress
most of the time; meanwhile the generate CLI and `runs.load_run` read the workdir again and
again, and a second trainer started on the same workdir is refused. The run must finish
with exit code 0 and the parameters of a run that nobody read.
"""
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from cfg_jax import runs
from cfg_jax import train_test

ROOT = train_test.ROOT


def _train(workdir):
  return [sys.executable, "-m", "cfg_jax.train", f"--config={ROOT / 'configs' / 'toy2d.py'}",
          f"--workdir={workdir}", "--config.training.batch_size=16",
          "--config.data.toy2d_num_examples=1024", "--config.model.mlp_hidden=32",
          "--config.training.num_steps=40", "--config.training.checkpoint_every=4",
          "--config.training.max_to_keep=2", "--config.training.log_every=40",
          "--config.training.sample_every=100000"]


def _sample(workdir, out):
  return [sys.executable, "-m", "cfg_jax.generate", f"--workdir={workdir}", "--w=1",
          "--num_samples=8", "--sampling.num_steps=4", "--batch_size=8", f"--out={out}"]


def test_readers_and_a_second_trainer_leave_a_training_run_as_if_nobody_read_it(tmp_path):
  reference = subprocess.run(_train(tmp_path / "reference"), capture_output=True, text=True,
                             timeout=300)
  assert reference.returncode == 0, reference.stderr[-3000:]

  live = tmp_path / "live"
  with open(tmp_path / "trainer.log", "w") as log:
    trainer = subprocess.Popen(_train(live), stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + 300
  while not any(p.name.isdigit() for p in live.glob("checkpoints/*")):
    assert trainer.poll() is None and time.monotonic() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  samplers = [subprocess.Popen(_sample(live, tmp_path / "samples_0"), stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)]
  trainer.send_signal(signal.SIGSTOP)  # keeps the first trainer alive whatever the timing
  try:
    second = subprocess.run(_train(live), capture_output=True, text=True, timeout=300)
  finally:
    trainer.send_signal(signal.SIGCONT)
  restored = []
  while trainer.poll() is None:
    restored.append(runs.load_run(live).step)
    if samplers[-1].poll() is not None:
      samplers.append(subprocess.Popen(_sample(live, tmp_path / f"samples_{len(samplers)}"),
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True))
  trainer.wait()
  assert trainer.returncode == 0, (tmp_path / "trainer.log").read_text()[-3000:]
  for sampler in samplers:
    _, err = sampler.communicate(timeout=300)
    assert sampler.returncode == 0, err[-3000:]
  assert len(restored) >= 3 and restored == sorted(restored), restored

  assert second.returncode == 1
  assert re.fullmatch(rf"cfg_jax.train: error: Another trainer is using {live}: host \S+, pid "
                      rf"{trainer.pid}, since [\d: -]+ UTC \(heartbeat \d+ s ago\)\. Stop it "
                      rf"first, or use another --workdir\. .*", second.stderr.splitlines()[-1])

  step_a, _, a = train_test.final_state(tmp_path / "reference")
  step_b, _, b = train_test.final_state(live)
  assert step_a == step_b == 40
  jax.tree.map(np.testing.assert_array_equal, a, b)
