r"""The InceptionV3 of FID, for ImageNet-scale data, and the checks of its weight file.

The TF 2015-12-05 graph that TTUR, pytorch-fid and ADM's evaluator use. Features: the
2048-d pool3; logits: pool3 · W of the 1008-way softmax layer without its bias, as
OpenAI's Inception-Score code and torch-fidelity compute them. Inputs are bilinearly
resized to 299x299 (no antialiasing, half-pixel centers: torch's
`F.interpolate(align_corners=False)`) and grayscale is repeated to RGB.

Weights: cfg_jax downloads nothing. Fetch pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (95,628,359 bytes; the GitHub release
`fid_weights` of mseitzer/pytorch-fid, also torch-fidelity's
`weights-inception-2015-12-05-6726825d.pth`, the same file) and pass its path. Its
SHA-256 is compared with `FID_INCEPTION_SHA256`, then it is read without torch
(`torch_weights.read_torch_state_dict`) and every tensor's name and shape is checked
against the Flax `InceptionV3`.
"""
from __future__ import annotations

import functools
import hashlib
from typing import Any

from etils import epath
import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cfg_jax.evaluation import features
from cfg_jax.evaluation import torch_weights

Array = jax.Array

FID_INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_INCEPTION_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"
INCEPTION_SIZE = 299


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


def inception_net(path: epath.PathLike, *,
                  sha256: str = FID_INCEPTION_SHA256) -> features.FeatureNet:
  """The FID InceptionV3 with the weights of `path`, after checking its hash and shapes."""
  check_inception_file(path, sha256=sha256)
  variables = torch_state_dict_to_inception(torch_weights.read_torch_state_dict(path))
  model = InceptionV3()

  @jax.jit
  def apply(x: Array) -> tuple[Array, Array]:
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)
    x = jax.image.resize(x, (x.shape[0], INCEPTION_SIZE, INCEPTION_SIZE, 3), "bilinear",
                         antialias=False)
    return model.apply(variables, x)

  return features.FeatureNet("inception_v3", sha256, apply, logits_are_labels=False)
