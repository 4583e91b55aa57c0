"""One trainer per workdir: refusals name the holder, abandoned locks are taken over."""
import json
import logging
import os
import re
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from cfg_jax import test_configs
from cfg_jax import train
from cfg_jax import train_test
from cfg_jax import workdir_lock


def _write_lock(workdir, *, host=None, pid=None, age=60., heartbeat_age=12.):
  now = time.time()
  holder = {"host": host or socket.gethostname(), "pid": os.getpid() if pid is None else pid,
            "start": now - age, "heartbeat": now - heartbeat_age, "token": "theirs"}
  workdir.mkdir(parents=True, exist_ok=True)
  (workdir / workdir_lock.LOCK_FILE).write_text(json.dumps(holder))
  return holder


def _dead_pid():
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  return int(proc.stdout)


def test_a_second_trainer_is_refused_with_the_first_ones_host_pid_and_start(tmp_path):
  holder = _write_lock(tmp_path)  # this test process, alive on this host
  lock_text = (tmp_path / "train.lock").read_text()
  with pytest.raises(workdir_lock.WorkdirLockedError) as refused:
    train.train(test_configs.toy2d(num_steps=4), str(tmp_path))
  since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(holder["start"]))
  assert str(refused.value).startswith(
      f"Another trainer is using {tmp_path}: host {socket.gethostname()}, pid {os.getpid()}, "
      f"since {since} (heartbeat 12 s ago). Stop it first, or use another --workdir.")
  assert "\n" not in str(refused.value)
  assert os.listdir(tmp_path) == ["train.lock"]
  assert (tmp_path / "train.lock").read_text() == lock_text


@pytest.mark.parametrize("holder,reason", [
    (dict(pid="dead"), r"its pid \d+ is no longer running on this host"),
    (dict(host="preempted-tpu-vm", heartbeat_age=301.), r"its last heartbeat was 301 s ago"),
])
def test_an_abandoned_lock_is_taken_over_with_a_warning(tmp_path, caplog, holder, reason):
  if holder.get("pid") == "dead":
    holder["pid"] = _dead_pid()
  _write_lock(tmp_path, **holder)
  with caplog.at_level(logging.WARNING):
    assert train.train(test_configs.toy2d(num_steps=4), str(tmp_path)) == 0
  (warning,) = [r.getMessage() for r in caplog.records if "Taking over" in r.getMessage()]
  assert re.fullmatch(rf"Taking over the lock of {tmp_path}: host [\w.-]+, pid \d+, since "
                      rf"[\d: -]+ UTC \(heartbeat \d+ s ago\); {reason}\.", warning), warning
  assert not (tmp_path / "train.lock").exists()  # released at the end


def test_another_hosts_lock_with_a_recent_heartbeat_is_respected(tmp_path):
  _write_lock(tmp_path, host="tpu-vm-7", pid=1, heartbeat_age=60.)
  with pytest.raises(workdir_lock.WorkdirLockedError, match=r"host tpu-vm-7, pid 1, .*"
                                                            r"\(heartbeat 60 s ago\)"):
    train.train(test_configs.toy2d(num_steps=4), str(tmp_path))


def test_the_lock_is_held_while_training_and_released_when_it_ends_or_fails(tmp_path,
                                                                          monkeypatch):
  held, check_finite = [], train.check_finite

  def spy(state, config, checkpointer):
    held.append((checkpointer.workdir / "train.lock").exists())
    return check_finite(state, config, checkpointer)

  monkeypatch.setattr(train, "check_finite", spy)
  assert train.train(test_configs.toy2d(num_steps=4), str(tmp_path / "a")) == 0
  monkeypatch.setattr(train, "diffusion_loss", train_test.nan_loss)
  with pytest.raises(train.NonFiniteError):
    train.train(test_configs.toy2d(num_steps=4), str(tmp_path / "b"))
  assert held and all(held)
  assert not (tmp_path / "a" / "train.lock").exists()
  assert not (tmp_path / "b" / "train.lock").exists()


def test_the_heartbeat_refreshes_the_lock_until_another_trainer_takes_it(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, "HEARTBEAT_SECS", 0.05)
  lock = workdir_lock.WorkdirLock(tmp_path)
  lock.acquire()
  path = tmp_path / "train.lock"
  first = json.loads(path.read_text())
  deadline = time.monotonic() + 30
  while json.loads(path.read_text())["heartbeat"] == first["heartbeat"]:
    assert time.monotonic() < deadline, "no heartbeat"
    time.sleep(0.05)
  assert {k: v for k, v in json.loads(path.read_text()).items() if k != "heartbeat"} == {
      k: v for k, v in first.items() if k != "heartbeat"}
  theirs = _write_lock(tmp_path, host="other-host", pid=7)  # taken over by another trainer
  time.sleep(0.3)
  lock.release()
  assert json.loads(path.read_text()) == theirs  # neither refreshed nor removed
  np.testing.assert_equal(os.listdir(tmp_path), ["train.lock"])
