"""Kill safety: SIGKILL at 5 random moments, resume each time, same final parameters.

The tiny mnist preset runs through the CLI with power EMAs (the state's extra EMAs and
their snapshots). A kill may land during start-up, a step, or the middle of writing a
checkpoint or a snapshot; each restart must resume from the last complete checkpoint and
the finished run, snapshots included, must equal an uninterrupted one bit for bit.
"""
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from cfg_jax import config_files
from cfg_jax import ema_snapshots
from cfg_jax import metric_writer_test
from cfg_jax import train_test

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_MNIST = ["--config.model.ch=8", "--config.model.ch_mult=(1,2)",
              "--config.model.num_res_blocks=1", "--config.model.attn_resolutions=()",
              "--config.model.num_head_channels=-1", "--config.model.num_heads=1",
              "--config.data.image_size=32", "--config.training.batch_size=8",
              "--config.training.num_steps=24", "--config.training.checkpoint_every=2",
              "--config.training.warmup_steps=4", "--config.training.learning_rate=2e-3",
              "--config.training.log_every=4", "--config.training.sample_every=1000",
              "--config.sampling.num_steps=2", "--config.sampling.w=(0.,)",
              "--config.sampling.num_per_class=1", "--config.sampling.grid_classes=2",
              "--config.training.ema=power", "--config.training.ema_snapshot_every=3"]


def _logged(workdir, tag):
  """The values of scalar `tag` in the run's TensorBoard events, in step order."""
  return [e.value for e in metric_writer_test.read_events(workdir / "tensorboard").Scalars(tag)]


def _command(workdir):
  return [sys.executable, "-m", "cfg_jax.train", f"--config={ROOT}/configs/mnist.py",
          f"--workdir={workdir}", *TINY_MNIST]


def test_sigkill_at_five_random_times_then_resume_matches_uninterrupted(tmp_path):
  straight = subprocess.run(_command(tmp_path / "straight"), capture_output=True, text=True,
                            timeout=600)
  assert straight.returncode == 0, straight.stderr[-3000:]
  # A second uninterrupted run loads its programs from the compilation cache the first
  # filled, as every restart below does: its length spaces the kills.
  start = time.monotonic()
  again = subprocess.run(_command(tmp_path / "again"), capture_output=True, text=True,
                         timeout=600)
  assert again.returncode == 0, again.stderr[-3000:]
  duration = time.monotonic() - start
  # The plain run through the CLI: loss falls, events, checkpoints and the sample grid.
  losses = _logged(tmp_path / "straight", "loss")
  assert len(losses) == 6 and losses[-1] < 0.8 * losses[0], losses
  assert (tmp_path / "straight" / "samples" / "step_00000024_w0.png").exists()

  rng = random.Random(0)
  killed = tmp_path / "killed"
  progress = []
  for _ in range(5):
    proc = subprocess.Popen(_command(killed), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(rng.uniform(0.3, 0.9) * duration)  # anywhere from start-up to the last saves
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    steps = [int(p.name) for p in (killed / "checkpoints").glob("*") if p.name.isdigit()]
    progress.append(max(steps, default=0))
  assert progress[-1] > 0, progress  # the kills did interrupt a run that was saving
  final = subprocess.run(_command(killed), capture_output=True, text=True, timeout=600)
  assert final.returncode == 0, final.stderr[-3000:]

  # Only complete checkpoints remain: no orbax temporary folders are left behind.
  names = sorted(p.name for p in (killed / "checkpoints").iterdir())
  assert all(name.isdigit() for name in names), names
  step_a, _, a = train_test.final_state(tmp_path / "straight")
  step_b, _, b = train_test.final_state(killed)
  step_c, _, c = train_test.final_state(tmp_path / "again")
  assert step_a == step_b == step_c == 24
  jax.tree.map(np.testing.assert_array_equal, a, c)  # a rerun is deterministic
  jax.tree.map(np.testing.assert_array_equal, a, b)
  config = config_files.load_config(killed)
  assert sorted(int(p.name) for p in (killed / ema_snapshots.SNAPSHOTS).iterdir()) == list(
      range(3, 25, 3))  # no temporary folders either
  snapshots = lambda run: list(ema_snapshots.read_snapshots(run, config, range(3, 25, 3)))
  jax.tree.map(np.testing.assert_array_equal, snapshots(tmp_path / "straight"),
               snapshots(killed))
