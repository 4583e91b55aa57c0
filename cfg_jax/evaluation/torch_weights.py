"""Reading a state dict saved by `torch.save` (zip or legacy format) without torch.

The file is untrusted: no pickle in it is loaded by a plain `pickle.load`. The header
pickles of the legacy format and its list of storage keys may hold plain data only (no
global at all); the state dict's pickle may name only OrderedDict, torch's tensor
rebuild function and storage dtypes. Zip member names are checked before anything is
read, and every storage's size is compared with what the file holds before its bytes
are read, so a damaged or crafted file ends in a one-line ValueError.
"""
from __future__ import annotations

import collections
import dataclasses
import math
import pickle
import zipfile
from typing import Any, Callable, Sequence

from etils import epath
import numpy as np

_TORCH_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                 "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32,
                 "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
                 "BoolStorage": np.bool_}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


@dataclasses.dataclass
class _Storage:
  dtype: np.dtype
  numel: int
  data: np.ndarray | None = None  # legacy files hold the bytes after the pickle


@dataclasses.dataclass(frozen=True)
class _Tensor:
  storage: _Storage
  offset: int
  shape: tuple[int, ...]
  stride: tuple[int, ...]

  def numpy(self) -> np.ndarray:
    data = self.storage.data
    if data is None or len(data) != self.storage.numel:
      raise ValueError("a tensor's storage is missing or truncated: the file is damaged.")
    if not all(isinstance(n, int) and n >= 0 for n in (self.offset, *self.shape, *self.stride)):
      raise ValueError("a tensor's offset, shape or stride is not a non-negative integer.")
    if 0 in self.shape:
      return np.zeros(self.shape, data.dtype)
    last = self.offset + sum((n - 1) * s for n, s in zip(self.shape, self.stride))
    if last >= len(data) or math.prod(self.shape) > len(data):
      raise ValueError("a tensor lies outside its storage: the file is damaged.")
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], self.shape, [s * data.itemsize for s in self.stride])
    return np.array(view)


def _rebuild_tensor(storage, offset, shape, stride, requires_grad, hooks, metadata=None):
  del requires_grad, hooks, metadata
  if not isinstance(storage, _Storage):
    raise pickle.UnpicklingError("a tensor is built from something other than a storage.")
  return _Tensor(storage, offset, tuple(shape), tuple(stride))


class _PlainDataUnpickler(pickle.Unpickler):
  """Numbers, strings, lists, tuples and dicts only: any global or persistent id is refused."""

  def find_class(self, module: str, name: str) -> Any:
    raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a torch.save header.")

  def persistent_load(self, pid: Any) -> Any:
    raise pickle.UnpicklingError("a persistent id is not allowed in a torch.save header.")


class _StateDictUnpickler(pickle.Unpickler):
  """Builds only dicts of tensors: any other global in the pickle is refused."""

  def __init__(self, file, storage: Callable[[Any, str, int, tuple], _Storage]):
    super().__init__(file)
    self._storage = storage

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch" and name in _TORCH_DTYPES:
      return np.dtype(_TORCH_DTYPES[name])
    raise pickle.UnpicklingError(f"{module}.{name} is not part of a tensor state dict.")

  def persistent_load(self, pid: Any) -> _Storage:
    """("storage", dtype, key, location, numel[, view]): a storage of `numel` elements."""
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] in ("storage", b"storage")):
      raise pickle.UnpicklingError(f"unknown persistent id {pid!r:.80}.")
    _, dtype, key, _, numel, *view = pid
    if not (isinstance(dtype, np.dtype) and isinstance(key, str) and isinstance(numel, int)
            and numel >= 0):
      raise pickle.UnpicklingError(f"a malformed storage id {pid!r:.80}.")
    return self._storage(dtype, key, numel, tuple(view))


def read_torch_state_dict(path: epath.PathLike) -> dict[str, np.ndarray]:
  """A state dict saved by `torch.save` (zip or legacy format) as numpy arrays, no torch.

  Safe on untrusted files (see the module docstring): nothing in the file is executed, and
  a file that is not a state dict raises a one-line ValueError naming it.
  """
  path = epath.Path(path)
  try:
    with path.open("rb") as f:
      if zipfile.is_zipfile(f):
        f.seek(0)
        state = _read_zip(f)
      else:
        f.seek(0)
        state = _read_legacy(f)
      if not isinstance(state, dict) or not all(isinstance(v, _Tensor) for v in state.values()):
        raise ValueError("it does not hold a state dict (a dict of tensors).")
      return {k: v.numpy() for k, v in state.items()}
  except OSError:
    raise
  except Exception as e:  # pickle and zipfile raise many types on crafted bytes
    reason = " ".join(str(e).split()) or type(e).__name__
    raise ValueError(f"{path} cannot be read as a torch.save state dict: {reason}") from e


def _zip_root(names: Sequence[str]) -> str:
  """`<top>/`, the folder every member of a torch zip lives in; refuses any other layout."""
  tops = {name.split("/", 1)[0] for name in names}
  for name in names:
    parts = name.split("/")
    if name.startswith("/") or "\\" in name or ".." in parts or len(parts) < 2 or not parts[0]:
      raise ValueError(f"the zip member {name!r:.80} is not a plain path under one folder.")
  if len(tops) != 1:
    raise ValueError(f"the zip's members lie in {len(tops)} top folders, not in one.")
  return tops.pop() + "/"


def _read_zip(f) -> Any:
  with zipfile.ZipFile(f) as archive:
    root = _zip_root(archive.namelist())
    if root + "data.pkl" not in archive.namelist():
      raise ValueError(f"a torch zip file holds {root}data.pkl, this one does not.")
    big_endian = (root + "byteorder" in archive.namelist()
                  and archive.read(root + "byteorder") == b"big")
    storages = {}

    def storage(dtype, key, numel, view):
      del view  # the zip format has none
      if key not in storages:
        name = f"{root}data/{key}"
        if name not in archive.namelist():
          raise ValueError(f"the storage {key!r:.40} is missing from the zip.")
        size, expected = archive.getinfo(name).file_size, numel * dtype.itemsize
        if size != expected:
          raise ValueError(f"the storage {key!r:.40} holds {size} bytes, its header "
                           f"promises {expected}: the file is damaged.")
        with archive.open(name) as member:
          raw = member.read(expected)  # bounded, whatever the member decompresses to
        storages[key] = _Storage(dtype, numel, _from_bytes(raw, dtype, big_endian=big_endian))
      return storages[key]

    with archive.open(root + "data.pkl") as pkl:
      return _StateDictUnpickler(pkl, storage).load()


def _read_legacy(f) -> Any:
  try:
    magic, protocol = _PlainDataUnpickler(f).load(), _PlainDataUnpickler(f).load()
  except Exception as e:  # pickle raises several types on arbitrary bytes
    raise ValueError(f"not a torch.save file (neither zip nor the legacy format): {e}") from e
  if magic != _LEGACY_MAGIC or protocol != _LEGACY_PROTOCOL:
    raise ValueError("not a torch.save file (neither zip nor the legacy format).")
  _PlainDataUnpickler(f).load()  # system info
  storages = {}

  def storage(dtype, key, numel, view):
    if any(v is not None for v in view):
      raise ValueError("storage views are not supported in a state dict file.")
    return storages.setdefault(key, _Storage(dtype, numel))

  state = _StateDictUnpickler(f, storage).load()
  keys = _PlainDataUnpickler(f).load()
  position, end = f.tell(), f.seek(0, 2)
  f.seek(position)
  for key in keys:  # then each storage: its element count (int64) and its bytes
    if key not in storages:
      raise ValueError(f"the file's storage list names {key!r:.40}, which no tensor uses.")
    s = storages[key]
    header = f.read(8)
    if len(header) != 8 or int.from_bytes(header, "little", signed=True) != s.numel:
      raise ValueError("a storage's size does not match its header: the file is damaged.")
    expected, left = s.numel * s.dtype.itemsize, end - f.tell()
    if expected > left:
      raise ValueError(f"the storage {key!r:.40} promises {expected} bytes, the file holds "
                       f"only {left} more: it is truncated or damaged.")
    s.data = _from_bytes(f.read(expected), s.dtype, big_endian=False)
  return state


def _from_bytes(raw: bytes, dtype: np.dtype, *, big_endian: bool) -> np.ndarray:
  """A native-endian array of `dtype` from bytes stored in the given byte order."""
  return np.frombuffer(raw, dtype.newbyteorder(">" if big_endian else "<")).astype(dtype)

