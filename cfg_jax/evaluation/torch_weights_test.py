"""Tests of the torch.save reader: both formats, views and offsets, and crafted files."""
import io
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest

from cfg_jax.evaluation import torch_weights


# torch.save's two formats, written without torch: a pickle whose tensors are
# torch._utils._rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks)
# with each storage a persistent id, and the storages' bytes beside it.

def _global(module, name):
  return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _str(s):
  raw = s.encode()
  return b"X" + struct.pack("<I", len(raw)) + raw


def _int(i):
  return b"J" + struct.pack("<i", i)


def _ints(values):
  return b"(" + b"".join(_int(v) for v in values) + b"t"


_ORDERED_DICT = _global("collections", "OrderedDict") + b")R"
_STORAGE_NAMES = {np.float32: "FloatStorage", np.int64: "LongStorage"}


def _state_dict_pickle(tensors, *, legacy):
  """tensors: {name: (storage key, storage array, offset, shape, stride)}."""
  out = [b"\x80\x02", _ORDERED_DICT, b"("]
  for name, (key, storage, offset, shape, stride) in tensors.items():
    pid = [_str("storage"), _global("torch", _STORAGE_NAMES[storage.dtype.type]), _str(key),
           _str("cpu"), _int(storage.size)] + ([b"N"] if legacy else [])
    out += [_str(name), _global("torch._utils", "_rebuild_tensor_v2"), b"(",
            b"(" + b"".join(pid) + b"tQ", _int(offset), _ints(shape), _ints(stride), b"\x89",
            _ORDERED_DICT, b"tR"]
  out.append(b"u.")
  return b"".join(out)


def legacy_parts(tensors):
  """The legacy format's five pickles (magic, protocol, system info, state dict, storage
  keys), then each storage's element count and bytes."""
  storages = {key: storage for key, storage, *_ in tensors.values()}
  pickles = [pickle.dumps(obj, protocol=2) for obj in (
      torch_weights._LEGACY_MAGIC, torch_weights._LEGACY_PROTOCOL, {"little_endian": True})]
  pickles += [_state_dict_pickle(tensors, legacy=True), pickle.dumps(list(storages), protocol=2)]
  data = b"".join(struct.pack("<q", s.size) + s.astype(s.dtype.newbyteorder("<")).tobytes()
                  for s in storages.values())
  return pickles, data


def zip_members(tensors):
  """{name: bytes} of the zip format, under the top folder `archive/`."""
  members = {"archive/data.pkl": _state_dict_pickle(tensors, legacy=False),
             "archive/byteorder": b"little"}
  for key, storage, *_ in tensors.values():
    members[f"archive/data/{key}"] = storage.tobytes()
  return members


def write_torch_file(path, tensors, *, legacy=False):
  if legacy:
    pickles, data = legacy_parts(tensors)
    with open(path, "wb") as f:
      f.write(b"".join(pickles) + data)
    return
  with zipfile.ZipFile(path, "w") as archive:
    for name, raw in zip_members(tensors).items():
      archive.writestr(name, raw)


def write_state_dict(path, state_dict):
  """Each array contiguous in a storage of its own, as torch.save writes a state dict."""
  tensors = {}
  for i, (name, value) in enumerate(state_dict.items()):
    value = np.ascontiguousarray(value)
    stride = [int(np.prod(value.shape[d + 1:])) for d in range(value.ndim)]
    tensors[name] = (str(i), value.reshape(-1), 0, value.shape, stride)
  write_torch_file(path, tensors)


@pytest.mark.parametrize("legacy", [False, True])
def test_read_torch_state_dict_handles_views_offsets_and_shared_storages(tmp_path, legacy):
  storage = np.arange(12, dtype=np.float32)
  counts = np.array([7, 8], np.int64)
  tensors = {
      "a.weight": ("0", storage, 0, (3, 4), (4, 1)),
      "a.weight_t": ("0", storage, 0, (4, 3), (1, 4)),     # a transposed view
      "b.bias": ("0", storage, 6, (2,), (2,)),             # an offset, strided slice
      "bn.num_batches_tracked": ("1", counts, 1, (), ()),  # a scalar
  }
  path = tmp_path / "weights.pth"
  write_torch_file(path, tensors, legacy=legacy)
  out = torch_weights.read_torch_state_dict(path)
  np.testing.assert_array_equal(out["a.weight"], storage.reshape(3, 4))
  np.testing.assert_array_equal(out["a.weight_t"], storage.reshape(3, 4).T)
  np.testing.assert_array_equal(out["b.bias"], [6., 8.])
  assert out["bn.num_batches_tracked"] == 8 and out["bn.num_batches_tracked"].dtype == np.int64


def test_read_torch_state_dict_refuses_other_objects_and_other_files(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl",
                     b"\x80\x02" + _global("os", "system") + b"(" + _str("ls") + b"tR.")
  with pytest.raises(ValueError, match="os.system is not part of a tensor state dict"):
    torch_weights.read_torch_state_dict(path)
  (tmp_path / "text.pth").write_text("not a checkpoint")
  with pytest.raises(ValueError, match="not a torch.save file"):
    torch_weights.read_torch_state_dict(tmp_path / "text.pth")


class _Payload:
  """Unpickled by a plain pickle.load, it runs `command` in a shell."""

  def __init__(self, command):
    self.command = command

  def __reduce__(self):
    return os.system, (self.command,)


_TENSORS = {"w": ("0", np.arange(3, dtype=np.float32), 0, (3,), (1,))}


def _crafted_legacy(tmp_path, marker):
  """One legacy file per pickle of the format, that pickle replaced by the payload."""
  pickles, data = legacy_parts(_TENSORS)
  for i in range(len(pickles)):
    crafted = list(pickles)
    crafted[i] = pickle.dumps(_Payload(f"touch {marker}"), protocol=2)
    yield f"legacy pickle {i}", b"".join(crafted) + data


def _zip(members):
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, "w") as archive:
    for name, raw in members.items():
      archive.writestr(name, raw)
  return buffer.getvalue()


def _crafted_zip(tmp_path, marker):
  members = zip_members(_TENSORS)
  yield "zip data.pkl", _zip(members | {
      "archive/data.pkl": pickle.dumps(_Payload(f"touch {marker}"), protocol=2)})
  yield "zip member under ..", _zip(members | {"archive/../../escape": b"x"})
  yield "zip absolute member", _zip(members | {"/etc/cron.d/x": b"x"})
  yield "zip second top folder", _zip(members | {"other/data.pkl": members["archive/data.pkl"]})
  yield "zip pickle outside the top folder", _zip(
      {name.replace("archive/data.pkl", "archive/../data.pkl"): raw
       for name, raw in members.items()})


def _oversized(tmp_path, marker):
  del marker
  huge = {"w": ("0", np.arange(3, dtype=np.float32), 0, (3,), (1,))}
  pickles, _ = legacy_parts(huge)
  pickles[3] = pickles[3].replace(_int(3), _int(2**31 - 1), 1)  # the storage's numel
  yield "legacy storage larger than the file", (b"".join(pickles) + struct.pack("<q", 2**31 - 1)
                                                + np.arange(3, dtype="<f4").tobytes())
  members = zip_members(huge)
  members["archive/data.pkl"] = members["archive/data.pkl"].replace(_int(3), _int(2**31 - 1), 1)
  yield "zip storage larger than its member", _zip(members)
  buffer = io.BytesIO()  # a member that inflates far beyond what its header promises
  with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
    for name, raw in zip_members(huge).items():
      archive.writestr(name, bytes(2**24) if name == "archive/data/0" else raw)
  yield "zip storage member that inflates beyond its header", buffer.getvalue()


@pytest.mark.parametrize("craft", [_crafted_legacy, _crafted_zip, _oversized])
def test_crafted_weight_files_run_nothing_and_end_in_one_line(tmp_path, craft):
  marker = tmp_path / "payload_ran"
  for case, raw in craft(tmp_path, marker):
    path = tmp_path / "crafted.pth"
    path.write_bytes(raw)
    with pytest.raises(ValueError) as error:
      torch_weights.read_torch_state_dict(path)
    message = str(error.value)
    assert not marker.exists(), f"{case}: the payload ran"
    assert "\n" not in message and message.startswith(f"{path} cannot be read"), (case, message)
    if "larger" in case or "inflates" in case:
      assert "promises" in message, (case, message)
