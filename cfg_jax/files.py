"""Files that appear whole or not at all: written under a temporary name, then renamed.

`write_bytes_atomic(path, data)` writes `<name>.tmp-<random>` in the folder of `path` and
renames it to `path`, replacing an earlier version. A kill or a full disk during the
write leaves the final name absent or holding its previous complete version, never a
prefix of the new one; a failed write removes its temporary file. Local paths and gs://
(through etils.epath) alike: a local rename is atomic, and a Cloud Storage object only
appears once fully uploaded.
"""
from __future__ import annotations

import contextlib
import io
import os
import secrets
from typing import Any

from etils import epath
import numpy as np

TMP_MARK = ".tmp-"  # what names the temporary files: <name>.tmp-<16 hex digits>


def is_local(path: epath.PathLike) -> bool:
  """Whether `path` is on a local filesystem (appends, hard links), not an object store
  such as gs://."""
  return "://" not in os.fspath(path)


def write_bytes_atomic(path: epath.PathLike, data: bytes) -> None:
  """Writes `data` to `path` through a temporary file in the same folder and a rename."""
  path = epath.Path(path)
  tmp = path.with_name(f"{path.name}{TMP_MARK}{secrets.token_hex(8)}")
  try:
    tmp.write_bytes(data)
    tmp.replace(path)
  except BaseException:
    with contextlib.suppress(OSError):
      tmp.unlink(missing_ok=True)
    raise


def write_text_atomic(path: epath.PathLike, text: str) -> None:
  """`write_bytes_atomic` of `text` encoded as UTF-8."""
  write_bytes_atomic(path, text.encode("utf-8"))


def write_npz_atomic(path: epath.PathLike, **arrays: Any) -> None:
  """`np.savez` of `arrays` to `path`, through `write_bytes_atomic`; the folder is made."""
  buffer = io.BytesIO()
  np.savez(buffer, **arrays)
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  write_bytes_atomic(path, buffer.getvalue())
