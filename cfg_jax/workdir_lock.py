"""One trainer per workdir: `<workdir>/train.lock`, held by process 0 while it trains.

The lock file is JSON: the holder's host, pid, start time and heartbeat (UTC seconds)
and a random token. A thread rewrites the heartbeat every HEARTBEAT_SECS. A second
trainer refuses to start, naming the holder, unless the lock is stale: its host is this
host and its pid is no longer alive (a killed trainer), or its heartbeat is older than
STALE_AFTER_SECS (a trainer on a host that died, e.g. a preempted TPU VM); a stale lock
is taken over with a warning. The lock is removed on every exit path except SIGKILL.

On local disk the file is created complete and exclusively (written under a temporary
name, then hard-linked to `train.lock`, which fails if it exists), so of two trainers
starting at once exactly one gets it. Cloud Storage has no exclusive create through
etils.epath: on gs:// the check and the write are two steps, so two trainers started
within the same moment may both start. Readers (generate, evaluate) ignore the lock.
"""
from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import threading
import time
from typing import Any, Iterator

from absl import logging
from etils import epath
import jax
from jax.experimental import multihost_utils
import numpy as np

from cfg_jax import files

LOCK_FILE = "train.lock"
HEARTBEAT_SECS = 30.
STALE_AFTER_SECS = 300.
_MESSAGE_BYTES = 2048  # room for the refusal message that process 0 sends the others


class WorkdirLockedError(RuntimeError):
  """Another trainer holds the workdir."""


def _utc(seconds: float) -> str:
  return datetime.datetime.fromtimestamp(seconds, datetime.timezone.utc).strftime(
      "%Y-%m-%d %H:%M:%S UTC")


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, owned by another user
    return True
  return True


def _stale_reason(holder: dict[str, Any], now: float) -> str | None:
  """Why the lock of `holder` no longer holds (None while it does)."""
  age = now - holder["heartbeat"]
  if holder["host"] == socket.gethostname() and not _pid_alive(holder["pid"]):
    return f"its pid {holder['pid']} is no longer running on this host"
  if age > STALE_AFTER_SECS:
    return f"its last heartbeat was {age:.0f} s ago"
  return None


def _describe(holder: dict[str, Any], now: float) -> str:
  return (f"host {holder['host']}, pid {holder['pid']}, since {_utc(holder['start'])} "
          f"(heartbeat {now - holder['heartbeat']:.0f} s ago)")


class WorkdirLock:
  """The lock of one workdir, acquired by `acquire()` and given back by `release()`."""

  def __init__(self, workdir: epath.PathLike):
    self.workdir = epath.Path(workdir)
    self.path = self.workdir / LOCK_FILE
    now = time.time()
    self._record = {"host": socket.gethostname(), "pid": os.getpid(), "start": now,
                    "heartbeat": now, "token": secrets.token_hex(8)}
    self._stop = threading.Event()
    self._thread = None

  def _read(self) -> dict[str, Any] | None:
    """The lock's content; None if there is no lock; {} if it cannot be parsed."""
    try:
      holder = json.loads(self.path.read_text())
    except FileNotFoundError:
      return None
    except ValueError:  # a lock written by no version of this module
      return {}
    required = {"host": str, "pid": int, "start": (int, float), "heartbeat": (int, float)}
    if not isinstance(holder, dict) or not all(isinstance(holder.get(k), t)
                                               for k, t in required.items()):
      return {}
    return holder

  def _create(self) -> bool:
    """Writes our lock if there is none; False if another appeared first."""
    text = json.dumps(self._record)
    if files.is_local(self.path):
      tmp = self.path.with_name(f"{LOCK_FILE}{files.TMP_MARK}{self._record['token']}")
      tmp.write_text(text)
      try:
        os.link(tmp, self.path)
      except FileExistsError:
        return False
      finally:
        tmp.unlink()
      return True
    if self.path.exists():
      return False
    files.write_text_atomic(self.path, text)
    return (self._read() or {}).get("token") == self._record["token"]

  def acquire(self) -> None:
    """Takes the lock, taking over a stale one; raises WorkdirLockedError if it is held."""
    self.workdir.mkdir(parents=True, exist_ok=True)
    while not self._create():
      holder, now = self._read(), time.time()
      if holder is None:  # released meanwhile
        continue
      reason = "it cannot be read" if not holder else _stale_reason(holder, now)
      if reason is None:
        raise WorkdirLockedError(
            f"Another trainer is using {self.workdir}: {_describe(holder, now)}. Stop it "
            f"first, or use another --workdir. (If it is gone, its lock {self.path} counts "
            f"as abandoned {STALE_AFTER_SECS:.0f} s after its last heartbeat.)")
      logging.warning("Taking over the lock of %s: %s; %s.", self.workdir,
                      _describe(holder, now) if holder else "an unreadable lock", reason)
      self.path.unlink(missing_ok=True)
    self._thread = threading.Thread(target=self._beat, name="cfg_jax-workdir-lock",
                                    daemon=True)
    self._thread.start()

  def _beat(self) -> None:
    """Rewrites the heartbeat until released; stops if another trainer took the lock."""
    while not self._stop.wait(HEARTBEAT_SECS):
      holder = self._read()
      if not holder or holder.get("token") != self._record["token"]:
        logging.warning("The lock %s is no longer this trainer's (%s); stop one of the two "
                        "trainers.", self.path, holder or "removed")
        return
      self._record["heartbeat"] = time.time()
      try:
        files.write_text_atomic(self.path, json.dumps(self._record))
      except OSError as e:  # the next beat tries again; training goes on
        logging.warning("Could not refresh the heartbeat of the lock %s: %s", self.path, e)

  def release(self) -> None:
    """Stops the heartbeat and removes the lock if it is still ours."""
    self._stop.set()
    if self._thread is not None:
      self._thread.join()
    holder = self._read()
    if holder and holder.get("token") == self._record["token"]:
      self.path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(workdir: epath.PathLike) -> Iterator[None]:
  """Holds the lock of `workdir` while the block runs (process 0 holds it for all hosts).

  Raises WorkdirLockedError, on every process, if another trainer holds it.
  """
  lock = WorkdirLock(workdir)
  refusal = ""
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except WorkdirLockedError as e:
      refusal = str(e)
  if jax.process_count() > 1:  # every process stops, with process 0's message
    raw = np.frombuffer(refusal.encode()[:_MESSAGE_BYTES].ljust(_MESSAGE_BYTES, b"\0"), np.uint8)
    refusal = np.asarray(multihost_utils.broadcast_one_to_all(raw), np.uint8).tobytes().rstrip(
        b"\0").decode(errors="replace")
  if refusal:
    raise WorkdirLockedError(refusal)
  try:
    yield
  finally:
    if jax.process_index() == 0:
      lock.release()
