"""What goes wrong around checkpoints, said in one line: the cause of a failed write and
what to do about it, an exception shortened for a message, and the silencing of the
echoes that orbax, asyncio and tensorstore print after a failed restore.
"""
from __future__ import annotations

import errno
import logging as std_logging
import sys
from typing import Any

ORBAX_TMP = ".orbax-checkpoint-tmp"  # the suffix of orbax's in-progress save folders


def short_error(error: BaseException, limit: int = 300) -> str:
  """`Type: message` on one line, without tensorstore's spec dumps, at most ~`limit` chars."""
  text = error.args[0] if isinstance(error, KeyError) and error.args else error
  text = " ".join(str(text).split(" [tensorstore_spec")[0].split())
  if len(text) > limit:
    text = f"{text[:limit // 3]} … {text[-2 * limit // 3:]}"
  return f"{type(error).__name__}: {text}"


def write_failure_cause(error: BaseException) -> tuple[str, str, BaseException]:
  """(what went wrong, what to do, the exception that shows it) for a failed checkpoint save.

  Looks through the exception and its causes, innermost first: a missing orbax temporary
  folder (deleted by another process during the save), a full disk, a read-only or
  forbidden folder.
  """
  chain, e = [], error
  while e is not None and e not in chain:
    chain.append(e)
    e = e.__cause__ or e.__context__
  for e in reversed(chain):
    text, code = str(e), getattr(e, "errno", None)
    if ORBAX_TMP in text and (code == errno.ENOENT or "NOT_FOUND" in text):
      return ("its temporary folder vanished while the save was in progress: another process "
              "deleted it (a sample or evaluate of an older cfg_jax, a cleanup job or a sync "
              "tool)", "stop that process", e)
    if code in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in text:
      return "the disk is full", "free disk space", e
    if code in (errno.EROFS, errno.EACCES, errno.EPERM) or any(
        s in text for s in ("Read-only file system", "Permission denied")):
      return ("the folder is read-only or not writable",
              "fix its permissions, or use another --workdir", e)
  return "the write failed", "fix the cause", chain[-1]


class DropMessages(std_logging.Filter):
  """Drops the log records whose message starts with one of `prefixes`."""

  def __init__(self, *prefixes: str):
    super().__init__()
    self.prefixes = prefixes

  def filter(self, record: std_logging.LogRecord) -> bool:
    return not str(record.msg).startswith(self.prefixes)


# Orbax's warning at every read-only CheckpointManager, which reads as a problem.
READ_ONLY_NOTICE = DropMessages("Given directory is read only")
# asyncio's reports of the reads that orbax abandons when a restore fails.
ABANDONED_READS = DropMessages("Task exception was never retrieved",
                                 "Future exception was never retrieved")


def quiet_abandoned_reads() -> None:
  """Silences the echoes of a failed restore, which `restore_newest` reports in one line.

  When one array of a checkpoint cannot be read, orbax gives up its other reads: asyncio
  then logs each of their errors as "never retrieved", and tensorstore's callbacks of
  those still in flight find orbax's event loop closed ("Event loop is closed", through
  sys.unraisablehook), dozens of tracebacks repeating the reported error.
  """
  std_logging.getLogger("asyncio").addFilter(ABANDONED_READS)  # a no-op once added
  if getattr(sys.unraisablehook, "drops_closed_loop_callbacks", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable: Any) -> None:
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == "Event loop is closed"):
      previous(unraisable)

  hook.drops_closed_loop_callbacks = True
  sys.unraisablehook = hook
