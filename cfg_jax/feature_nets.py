r"""Feature networks for FID, IS and precision/recall: what `cfg_jax.evaluate` measures with.

A `FeatureNet` maps data in [-1, 1] to (features [B, D], logits [B, K]). Three kinds:

* `inception_net`: the InceptionV3 of FID (the TF 2015-12-05 graph that TTUR, pytorch-fid
  and ADM's evaluator use), for ImageNet-scale data. Features: the 2048-d pool3; logits:
  pool3 · W of the 1008-way softmax layer without its bias, as OpenAI's Inception-Score
  code and torch-fidelity compute them. Inputs are bilinearly resized to 299x299 (no
  antialiasing, half-pixel centers: torch's `F.interpolate(align_corners=False)`) and
  grayscale is repeated to RGB.

  Weights: these machines cannot download them. Fetch pytorch-fid's
  `pt_inception-2015-12-05-6726825d.pth` (95,628,359 bytes; the GitHub release
  `fid_weights` of mseitzer/pytorch-fid, also torch-fidelity's
  `weights-inception-2015-12-05-6726825d.pth`, the same file) elsewhere and pass its path.
  It is read without torch (a restricted unpickler that builds numpy arrays and refuses
  any other object; both torch.save formats, zip and legacy) after its SHA-256 is
  compared with `FID_INCEPTION_SHA256`; then every tensor's name and shape is checked
  against the Flax `InceptionV3`.

* `eval_classifier_net`: for MNIST-like data, a small clean-image CNN (`EvalClassifier`,
  configs/mnist_eval_classifier.py) trained here on the run's own data on first use and
  cached. Features: its 128-d penultimate layer; logits: its class logits. A dedicated
  CNN rather than the noisy ADM `Classifier`: it reaches ~98% on MNIST in a couple of
  minutes of CPU, where the ADM classifier needs tens of minutes.

* `points_net`: toy2d. Features: the 2-D points themselves; logits: log p(c | x) of the
  exact mixture, the Bayes-optimal classifier.
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import math
import pickle
import re
import time
import zipfile
from typing import Any, Callable, Iterator, Sequence

from absl import logging
from etils import epath
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from cfg_jax import files
from cfg_jax import input_pipeline
from cfg_jax import mixture
from cfg_jax import parallel
from cfg_jax import visualization

Array = jax.Array

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_SIZE = 299


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A jitted map from a batch in [-1, 1] to (features [B, D], logits [B, K]).

  Attributes:
    name: what the features are, e.g. "inception_v3", "eval_classifier", "points".
    fingerprint: identifies the weights, so cached statistics of real data stay valid.
    apply: the jitted function.
    logits_are_labels: whether logit k is the data's class k (so accuracy on the
      intended labels means something; not for Inception's 1008 ImageNet outputs).
    info: facts for the report, e.g. the held-out accuracy of an eval classifier.
  """
  name: str
  fingerprint: str
  apply: Callable[[Array], tuple[Array, Array]]
  logits_are_labels: bool
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


def compute_features(net: FeatureNet, x: np.ndarray, *, batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(features, logits) of x, `batch_size` at a time, sharded over the devices.

  The last batch is padded so every call has one shape and one compile
  (`parallel.apply_in_batches`).
  """
  if len(x) == 0:
    raise ValueError("compute_features needs at least one example.")
  features, logits = parallel.apply_in_batches(lambda k, batch: net.apply(batch),
                                               np.asarray(x, np.float32), batch_size=batch_size)
  return np.asarray(features, np.float32), np.asarray(logits, np.float32)


# --- InceptionV3, the FID variant --------------------------------------------------------


class _BasicConv(nn.Module):
  """Conv (no bias), BatchNorm with running statistics (eps 1e-3), ReLU."""
  features: int
  kernel: tuple[int, int]
  strides: int = 1
  padding: tuple[int, int] = (0, 0)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.Conv(self.features, self.kernel, (self.strides, self.strides),
                padding=[(p, p) for p in self.padding], use_bias=False, name="conv")(x)
    return nn.relu(nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x))


def _avg_pool_3x3(x: Array) -> Array:
  # TF's average pool, unlike torchvision's, ignores the zero padding (pytorch-fid's patch).
  return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


class _InceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = _BasicConv(64, (1, 1), name="branch1x1")(x)
    b5 = _BasicConv(48, (1, 1), name="branch5x5_1")(x)
    b5 = _BasicConv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = _BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = _BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = _BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = _BasicConv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class _InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = _BasicConv(384, (3, 3), strides=2, name="branch3x3")(x)
    bd = _BasicConv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = _BasicConv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = _BasicConv(96, (3, 3), strides=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, nn.max_pool(x, (3, 3), (2, 2))], axis=-1)


class _InceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    c = self.channels_7x7
    b1 = _BasicConv(192, (1, 1), name="branch1x1")(x)
    b7 = _BasicConv(c, (1, 1), name="branch7x7_1")(x)
    b7 = _BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = _BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = _BasicConv(c, (1, 1), name="branch7x7dbl_1")(x)
    bd = _BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = _BasicConv(c, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = _BasicConv(c, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = _BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = _BasicConv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class _InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x: Array) -> Array:
    b3 = _BasicConv(192, (1, 1), name="branch3x3_1")(x)
    b3 = _BasicConv(320, (3, 3), strides=2, name="branch3x3_2")(b3)
    b7 = _BasicConv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = _BasicConv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = _BasicConv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = _BasicConv(192, (3, 3), strides=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, nn.max_pool(x, (3, 3), (2, 2))], axis=-1)


class _InceptionE(nn.Module):
  max_pool: bool  # the graph's last block max-pools its pool branch (pytorch-fid's E_2)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b1 = _BasicConv(320, (1, 1), name="branch1x1")(x)
    b3 = _BasicConv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([_BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          _BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], -1)
    bd = _BasicConv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = _BasicConv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([_BasicConv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          _BasicConv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], -1)
    pooled = (nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1))) if self.max_pool
              else _avg_pool_3x3(x))
    bp = _BasicConv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class InceptionV3(nn.Module):
  """The FID InceptionV3: x [B, H, W, 3] in [-1, 1] -> (pool3 [B, 2048], logits [B, 1008]).

  Module names are those of torchvision / pytorch-fid, so a state dict maps onto it
  key by key. H = W = 299 for the standard features (`inception_net` resizes).
  """
  num_classes: int = 1008

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    x = _BasicConv(32, (3, 3), strides=2, name="Conv2d_1a_3x3")(x)
    x = _BasicConv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = _BasicConv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = _BasicConv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = _BasicConv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = nn.max_pool(x, (3, 3), (2, 2))
    x = _InceptionA(32, name="Mixed_5b")(x)
    x = _InceptionA(64, name="Mixed_5c")(x)
    x = _InceptionA(64, name="Mixed_5d")(x)
    x = _InceptionB(name="Mixed_6a")(x)
    for name, channels_7x7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160),
                               ("Mixed_6e", 192)):
      x = _InceptionC(channels_7x7, name=name)(x)
    x = _InceptionD(name="Mixed_7a")(x)
    x = _InceptionE(max_pool=False, name="Mixed_7b")(x)
    x = _InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool3 = jnp.mean(x, axis=(1, 2))
    # The softmax layer's bias is left out of the IS logits (see the module docstring).
    fc_kernel = self.param("fc_kernel", nn.initializers.lecun_normal(),
                           (pool3.shape[-1], self.num_classes))
    return pool3, pool3 @ fc_kernel


def inception_variable_shapes() -> dict[str, Any]:
  """{"params", "batch_stats"} of `InceptionV3` as ShapeDtypeStructs, allocating nothing."""
  x = jnp.zeros((1, INCEPTION_SIZE, INCEPTION_SIZE, 3))
  return jax.eval_shape(lambda: InceptionV3().init(jax.random.key(0), x))


def torch_state_dict_to_inception(state_dict: dict[str, np.ndarray]) -> dict[str, Any]:
  """Flax variables of `InceptionV3` from a torchvision/pytorch-fid state dict.

  Conv weights [O, I, kh, kw] become kernels [kh, kw, I, O]; BatchNorm weight/bias/
  running_mean/running_var become scale/bias/mean/var; fc.weight [1008, 2048] becomes
  fc_kernel [2048, 1008]. Raises ValueError naming every missing, unexpected or
  misshapen tensor.
  """
  flat, unexpected = {}, []
  for key, value in state_dict.items():
    *module, kind, leaf = ("root." + key).split(".")
    module = module[1:]
    if leaf == "num_batches_tracked":
      continue
    if (kind, leaf) == ("fc", "weight") and not module:
      flat[("params", "fc_kernel")] = value.T
    elif (kind, leaf) == ("fc", "bias") and not module:
      flat[("fc.bias",)] = value  # checked for its shape, unused (see InceptionV3)
    elif kind == "conv" and leaf == "weight" and value.ndim == 4:
      flat[("params", *module, "conv", "kernel")] = value.transpose(2, 3, 1, 0)
    elif kind == "bn" and leaf in ("weight", "bias"):
      flat[("params", *module, "bn", "scale" if leaf == "weight" else "bias")] = value
    elif kind == "bn" and leaf in ("running_mean", "running_var"):
      flat[("batch_stats", *module, "bn", leaf[len("running_"):])] = value
    else:
      unexpected.append(key)
  expected = {k: v.shape for k, v in
              flax.traverse_util.flatten_dict(inception_variable_shapes()).items()}
  expected[("fc.bias",)] = (expected[("params", "fc_kernel")][1],)
  missing = sorted(".".join(k) for k in expected if k not in flat)
  unexpected += sorted(".".join(k) for k in flat if k not in expected)
  misshapen = [f"{'.'.join(k)}: {flat[k].shape} (expected {shape})"
               for k, shape in expected.items() if k in flat and flat[k].shape != shape]
  if missing or unexpected or misshapen:
    raise ValueError(f"The state dict is not the FID InceptionV3: missing {missing[:5]}, "
                     f"unexpected {unexpected[:5]}, wrong shapes {misshapen[:5]} "
                     f"({len(missing)}, {len(unexpected)}, {len(misshapen)} in all).")
  del flat[("fc.bias",)]
  return flax.traverse_util.unflatten_dict(
      {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()})


def file_sha256(path: epath.PathLike) -> str:
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for block in iter(functools.partial(f.read, 1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def check_inception_file(path: epath.PathLike, *, sha256: str = FID_INCEPTION_SHA256) -> None:
  """Raises unless `path` exists and its SHA-256 is `sha256` (--inception_weights)."""
  path = epath.Path(path)
  where = (f"download {FID_INCEPTION_FILE} from the `fid_weights` release of "
           f"mseitzer/pytorch-fid on a machine with internet access and copy it here")
  if not path.is_file():
    raise FileNotFoundError(f"--inception_weights={path} does not exist: {where}.")
  actual = file_sha256(path)
  if actual != sha256:
    raise ValueError(f"--inception_weights={path} has SHA-256 {actual}, expected {sha256} "
                     f"({FID_INCEPTION_FILE}): a different or damaged file; {where}.")


def inception_net(path: epath.PathLike, *, sha256: str = FID_INCEPTION_SHA256) -> FeatureNet:
  """The FID InceptionV3 with the weights of `path`, after checking its hash and shapes."""
  check_inception_file(path, sha256=sha256)
  variables = torch_state_dict_to_inception(read_torch_state_dict(path))
  model = InceptionV3()

  @jax.jit
  def apply(x: Array) -> tuple[Array, Array]:
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = jax.image.resize(x, (x.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), "bilinear",
                         antialias=False)
    return model.apply(variables, x)

  return FeatureNet("inception_v3", sha256, apply, logits_are_labels=False)


# --- Reading torch.save files without torch ------------------------------------------------
#
# The file is untrusted: no pickle in it is loaded by a plain `pickle.load`. The header
# pickles of the legacy format and its list of storage keys may hold plain data only (no
# global at all); the state dict's pickle may name only OrderedDict, torch's tensor
# rebuild function and storage dtypes. Zip member names are checked before anything is
# read, and every storage's size is compared with what the file holds before its bytes
# are read, so a damaged or crafted file ends in a one-line ValueError.

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

  Safe on untrusted files (see the comment above): nothing in the file is executed, and
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


# --- The evaluation classifier for MNIST-like data -------------------------------------------


class EvalClassifier(nn.Module):
  """A small clean-image CNN: x [B, H, W, C] in [-1, 1] -> (features [B, D], logits [B, K]).

  Per stage two 3x3 conv + ReLU and a 2x2 max-pool, then a dense ReLU layer whose output
  is the feature vector, dropout and the class logits. H, W must be multiples of
  2^len(channels).
  """
  num_classes: int
  channels: Sequence[int] = (16, 32)
  features: int = 128
  dropout: float = 0.3

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, Array]:
    for i, ch in enumerate(self.channels):
      x = nn.relu(nn.Conv(ch, (3, 3), name=f"conv{i}_a")(x))
      x = nn.relu(nn.Conv(ch, (3, 3), name=f"conv{i}_b")(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    h = nn.relu(nn.Dense(self.features, name="penultimate")(x.reshape(x.shape[0], -1)))
    logits = nn.Dense(self.num_classes, name="logits")(
        nn.Dropout(self.dropout, deterministic=not train)(h))
    return h, logits


def data_chunks(dataset: input_pipeline.Dataset, num: int, *, chunk: int = 1024
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The first `num` examples of the dataset's order, `chunk` at a time, as (x, labels).

  They are distinct when num <= len(dataset): epoch 0 is a permutation.
  """
  for start in range(0, num, chunk):
    batch = dataset.batch(start // chunk, batch_size=chunk)  # stream positions [start, …)
    yield batch["x"][:num - start], batch["label"][:num - start]


def read_examples(dataset: input_pipeline.Dataset, num: int) -> tuple[np.ndarray, np.ndarray]:
  """`data_chunks` concatenated: the first `num` examples as (x, labels)."""
  xs, labels = zip(*data_chunks(dataset, num))
  return np.concatenate(xs), np.concatenate(labels)


def eval_data_config(run_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with flips off: evaluation reads the data as it is."""
  config = run_config.copy_and_resolve_references()
  config.data.random_flip = False
  return config


def data_fields(run_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields that fix which examples a run's data are, for cache keys."""
  d = run_config.data
  return {"source": d.source, "image_size": d.image_size, "channels": d.channels,
          "num_classes": d.num_classes, "tfds_split": d.tfds_split, "seed": run_config.seed,
          "toy2d": [d.toy2d_num_examples, d.toy2d_radius, d.toy2d_std]}


def eval_classifier_dir(cache_root: epath.PathLike, classifier_config: ml_collections.ConfigDict,
                        run_config: ml_collections.ConfigDict) -> epath.Path:
  """`<cache_root>/<source>-<hash of data and classifier config>`: one entry per data source."""
  key = json.dumps({"data": data_fields(run_config), "classifier": classifier_config.to_dict()},
                   sort_keys=True, default=list)
  slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run_config.data.source)
  return epath.Path(cache_root) / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def train_eval_classifier(classifier_config: ml_collections.ConfigDict,
                          run_config: ml_collections.ConfigDict) -> tuple[Any, float]:
  """Trains `EvalClassifier` on the run's data; returns (params, held-out accuracy).

  The last `training.holdout` examples of the data order are held out to measure the
  accuracy; the rest are read in batches with `input_pipeline.from_arrays`.
  """
  c, t = classifier_config, classifier_config.training
  dataset = input_pipeline.create_dataset(eval_data_config(run_config), process_index=0,
                                          process_count=1)
  if not 0 < t.holdout < len(dataset):
    raise ValueError(f"eval classifier training.holdout={t.holdout} must lie in "
                     f"(0, {len(dataset)}), the size of {run_config.data.source!r}.")
  x, labels = read_examples(dataset, len(dataset))
  num_classes = run_config.data.num_classes
  train_set = input_pipeline.from_arrays(visualization.to_uint8(x[:-t.holdout]),
                                         labels[:-t.holdout], num_classes=num_classes,
                                         seed=c.seed)
  model = EvalClassifier(num_classes, **c.model)
  rng = jax.random.PRNGKey(c.seed)
  params = model.init(rng, x[:1], train=False)["params"]
  tx = optax.adam(t.learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch, step):
    def loss_fn(params):
      _, logits = model.apply({"params": params}, batch["x"], train=True,
                              rngs={"dropout": jax.random.fold_in(rng, step)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for step, batch in train_set.iterate(0, batch_size=t.batch_size, stop_step=t.num_steps):
    params, opt_state, loss = train_step(params, opt_state, batch, step)
    if (step + 1) % max(t.num_steps // 5, 1) == 0:
      logging.info("eval classifier step %d/%d: loss %.4f", step + 1, t.num_steps, float(loss))
  net = _classifier_feature_net(model, params, "")
  _, logits = compute_features(net, x[-t.holdout:], batch_size=t.batch_size)
  return params, float(np.mean(np.argmax(logits, -1) == labels[-t.holdout:]))


def _classifier_feature_net(model: EvalClassifier, params: Any, fingerprint: str,
                            info: dict[str, Any] | None = None) -> FeatureNet:
  apply = jax.jit(lambda x: model.apply({"params": params}, x, train=False))
  return FeatureNet("eval_classifier", fingerprint, apply, logits_are_labels=True,
                    info=info or {})


def eval_classifier_net(classifier_config: ml_collections.ConfigDict,
                        run_config: ml_collections.ConfigDict, *,
                        cache_root: epath.PathLike) -> FeatureNet:
  """The eval classifier of the run's data: restored from its cache, else trained and cached.

  The cache is `eval_classifier_dir(cache_root, ...)`: `params.msgpack` and `info.json`
  (written last, so an interrupted training is redone).
  """
  if run_config.data.source == "toy2d":
    raise ValueError("the eval classifier is for images; toy2d uses points_net.")
  directory = eval_classifier_dir(cache_root, classifier_config, run_config)
  model = EvalClassifier(run_config.data.num_classes, **classifier_config.model)
  info_path = directory / "info.json"
  if info_path.exists():
    info = json.loads(info_path.read_text())
    raw = (directory / "params.msgpack").read_bytes()
    params = flax.serialization.msgpack_restore(raw)
    logging.info("Restored the eval classifier from %s (held-out accuracy %.4f).", directory,
                 info["held_out_accuracy"])
  else:
    logging.info("Training the eval classifier of %r into %s.", run_config.data.source, directory)
    start = time.time()
    params, accuracy = train_eval_classifier(classifier_config, run_config)
    raw = flax.serialization.to_bytes(params)
    info = {"held_out_accuracy": accuracy, "train_seconds": round(time.time() - start, 1),
            "data": data_fields(run_config), "classifier": classifier_config.to_dict()}
    if jax.process_index() == 0:
      directory.mkdir(parents=True, exist_ok=True)
      files.write_bytes_atomic(directory / "params.msgpack", raw)
      files.write_text_atomic(info_path, json.dumps(info, indent=2, default=list))
    logging.info("Eval classifier trained in %.0f s, held-out accuracy %.4f.",
                 info["train_seconds"], accuracy)
  return _classifier_feature_net(model, params, hashlib.sha256(raw).hexdigest(),
                                 {"eval_classifier_dir": str(directory),
                                  "eval_classifier_held_out_accuracy": info["held_out_accuracy"]})


# --- toy2d --------------------------------------------------------------------------------


def points_net(run_config: ml_collections.ConfigDict) -> FeatureNet:
  """toy2d: features are the points, logits log p(c | x) of the exact mixture."""
  gmm = input_pipeline.toy2d_mixture(run_config)
  logits_fn = mixture.classifier_fn(gmm)

  @jax.jit
  def apply(x: Array) -> tuple[Array, Array]:
    # p(c | z_λ) at λ = 30 (σ² ≈ 1e-13) is the posterior of the clean point.
    return x, logits_fn(None, x, jnp.full(x.shape[:1], 30., jnp.float32))

  fingerprint = hashlib.sha256(json.dumps(
      [np.asarray(gmm.means).tolist(), np.asarray(gmm.covs).tolist()]).encode())
  return FeatureNet("points", fingerprint.hexdigest(), apply, logits_are_labels=True)
