"""Tests of the feature nets: torch files, InceptionV3 loading, eval classifier, toy2d."""
import io
import os
import pickle
import struct
import zipfile

import flax
import jax
import ml_collections
import numpy as np
import pytest

from cfg_jax import config_lib
from cfg_jax import feature_nets
from cfg_jax import input_pipeline


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
      feature_nets._LEGACY_MAGIC, feature_nets._LEGACY_PROTOCOL, {"little_endian": True})]
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
  out = feature_nets.read_torch_state_dict(path)
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
    feature_nets.read_torch_state_dict(path)
  (tmp_path / "text.pth").write_text("not a checkpoint")
  with pytest.raises(ValueError, match="not a torch.save file"):
    feature_nets.read_torch_state_dict(tmp_path / "text.pth")


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
      feature_nets.read_torch_state_dict(path)
    message = str(error.value)
    assert not marker.exists(), f"{case}: the payload ran"
    assert "\n" not in message and message.startswith(f"{path} cannot be read"), (case, message)
    if "larger" in case or "inflates" in case:
      assert "promises" in message, (case, message)


def _torch_state_dict(variables):
  """The torchvision/pytorch-fid names and layouts of InceptionV3 variables."""
  out = {}
  for path, value in flax.traverse_util.flatten_dict(jax.device_get(variables)).items():
    collection, *module, leaf = path
    name = ".".join(module)
    if leaf == "fc_kernel":
      out["fc.weight"], out["fc.bias"] = value.T, np.zeros(value.shape[1], np.float32)
    elif leaf == "kernel":
      out[f"{name}.weight"] = value.transpose(3, 2, 0, 1)
    else:
      torch_leaf = {"scale": "weight", "bias": "bias", "mean": "running_mean",
                    "var": "running_var"}[leaf]
      out[f"{name}.{torch_leaf}"] = value
      if leaf == "var":
        out[f"{name}.num_batches_tracked"] = np.zeros((), np.int64)
  return out


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
  """A pytorch-fid-layout file of randomly initialized InceptionV3 weights (~95 MB)."""
  shapes = feature_nets.inception_variable_shapes()
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes)
  variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # variances > 0
  path = tmp_path_factory.mktemp("inception") / feature_nets.FID_INCEPTION_FILE
  write_state_dict(path, _torch_state_dict(variables))
  return path, variables


def test_inception_state_dict_conversion_round_trips(inception_file):
  path, variables = inception_file
  state_dict = feature_nets.read_torch_state_dict(path)
  # torchvision's InceptionV3 without AuxLogits: 94 conv + BatchNorm blocks (a conv weight and
  # 5 BatchNorm tensors each) and the 1008-way fc.
  assert len(state_dict) == 94 * 6 + 2
  converted = feature_nets.torch_state_dict_to_inception(state_dict)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(converted), variables)


def test_inception_net_loads_checked_weights_and_gives_pool3_and_logits(inception_file):
  path, _ = inception_file
  net = feature_nets.inception_net(path, sha256=feature_nets.file_sha256(path))
  x = np.random.default_rng(1).uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32)
  features, logits = feature_nets.compute_features(net, x, batch_size=2)
  assert features.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.all(np.isfinite(features)) and np.all(features >= 0)  # pool3 of ReLUs
  assert not net.logits_are_labels


def test_inception_weights_errors(tmp_path, inception_file):
  with pytest.raises(FileNotFoundError, match=r"--inception_weights=.*missing.pth does not exist"):
    feature_nets.inception_net(tmp_path / "missing.pth")
  path, _ = inception_file
  with pytest.raises(ValueError, match=r"--inception_weights=.* has SHA-256 [0-9a-f]{64}, "
                     f"expected {feature_nets.FID_INCEPTION_SHA256}"):
    feature_nets.check_inception_file(path)
  state_dict = feature_nets.read_torch_state_dict(path)
  state_dict["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  del state_dict["Mixed_7c.branch_pool.bn.running_var"]
  state_dict["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  with pytest.raises(ValueError, match=r"missing \['batch_stats.Mixed_7c.branch_pool.bn.var'\], "
                     r"unexpected \['AuxLogits.fc.weight'\], wrong shapes "
                     r"\['params.Mixed_5b.branch1x1.conv.kernel: \(3, 3, 192, 64\) "
                     r"\(expected \(1, 1, 192, 64\)\)'\]"):
    feature_nets.torch_state_dict_to_inception(state_dict)


def _tiny_classifier_config():
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = ml_collections.ConfigDict(dict(channels=(8,), features=16, dropout=0.))
  config.training = ml_collections.ConfigDict(dict(num_steps=40, batch_size=32,
                                                   learning_rate=3e-3, holdout=200))
  return config


def test_eval_classifier_trains_once_and_is_cached(tmp_path, monkeypatch):
  run_config = config_lib.base_config()
  run_config.data.image_size = 16
  config = _tiny_classifier_config()
  net = feature_nets.eval_classifier_net(config, run_config, cache_root=tmp_path)
  accuracy = net.info["eval_classifier_held_out_accuracy"]
  assert accuracy > 0.5  # 10 classes: chance is 0.1
  dataset = input_pipeline.create_dataset(run_config)
  x, labels = feature_nets.read_examples(dataset, 50)
  features, logits = feature_nets.compute_features(net, x, batch_size=32)
  assert features.shape == (50, 16) and logits.shape == (50, 10) and net.logits_are_labels

  def no_training(*args):
    raise AssertionError("the cached eval classifier should have been restored")

  monkeypatch.setattr(feature_nets, "train_eval_classifier", no_training)
  restored = feature_nets.eval_classifier_net(config, run_config, cache_root=tmp_path)
  assert restored.fingerprint == net.fingerprint
  np.testing.assert_allclose(feature_nets.compute_features(restored, x, batch_size=32)[1], logits,
                             rtol=1e-5, atol=1e-5)
  # Another data source (or config) gets its own cache entry.
  fashion = run_config.copy_and_resolve_references()
  fashion.data.source = "fashion_mnist"
  assert (feature_nets.eval_classifier_dir(tmp_path, config, run_config)
          != feature_nets.eval_classifier_dir(tmp_path, config, fashion))


def test_points_net_is_the_bayes_classifier_of_toy2d():
  config = config_lib.base_config()
  config.data.update(source="toy2d", num_classes=4)
  net = feature_nets.points_net(config)
  means = np.asarray(input_pipeline.toy2d_mixture(config).means, np.float32)
  features, logits = feature_nets.compute_features(net, means, batch_size=4)
  np.testing.assert_array_equal(features, means)
  np.testing.assert_array_equal(np.argmax(logits, -1), np.arange(4))
