"""Tests of the FID InceptionV3: loading a checked weight file, conversion, errors."""
import flax
import jax
import numpy as np
import pytest

from cfg_jax.evaluation import features
from cfg_jax.evaluation import inception
from cfg_jax.evaluation import torch_weights
from cfg_jax.evaluation import torch_weights_test


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
  shapes = inception.inception_variable_shapes()
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.normal(0, 0.05, s.shape).astype(np.float32), shapes)
  variables["batch_stats"] = jax.tree.map(np.abs, variables["batch_stats"])  # variances > 0
  path = tmp_path_factory.mktemp("inception") / inception.FID_INCEPTION_FILE
  torch_weights_test.write_state_dict(path, _torch_state_dict(variables))
  return path, variables


def test_inception_state_dict_conversion_round_trips(inception_file):
  path, variables = inception_file
  state_dict = torch_weights.read_torch_state_dict(path)
  # torchvision's InceptionV3 without AuxLogits: 94 conv + BatchNorm blocks (a conv weight and
  # 5 BatchNorm tensors each) and the 1008-way fc.
  assert len(state_dict) == 94 * 6 + 2
  converted = inception.torch_state_dict_to_inception(state_dict)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(converted), variables)


def test_inception_net_loads_checked_weights_and_gives_pool3_and_logits(inception_file):
  path, _ = inception_file
  net = inception.inception_net(path, sha256=inception.file_sha256(path))
  x = np.random.default_rng(1).uniform(-1, 1, (2, 28, 28, 1)).astype(np.float32)
  pool3, logits = features.compute_features(net, x, batch_size=2)
  assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
  assert np.all(np.isfinite(pool3)) and np.all(pool3 >= 0)  # pool3 of ReLUs
  assert not net.logits_are_labels


def test_inception_weights_errors(tmp_path, inception_file):
  with pytest.raises(FileNotFoundError, match=r"--inception_weights=.*missing.pth does not exist"):
    inception.inception_net(tmp_path / "missing.pth")
  path, _ = inception_file
  with pytest.raises(ValueError, match=r"--inception_weights=.* has SHA-256 [0-9a-f]{64}, "
                     f"expected {inception.FID_INCEPTION_SHA256}"):
    inception.check_inception_file(path)
  state_dict = torch_weights.read_torch_state_dict(path)
  state_dict["Mixed_5b.branch1x1.conv.weight"] = np.zeros((64, 192, 3, 3), np.float32)
  del state_dict["Mixed_7c.branch_pool.bn.running_var"]
  state_dict["AuxLogits.fc.weight"] = np.zeros((1000, 768), np.float32)
  with pytest.raises(ValueError, match=r"missing \['batch_stats.Mixed_7c.branch_pool.bn.var'\], "
                     r"unexpected \['AuxLogits.fc.weight'\], wrong shapes "
                     r"\['params.Mixed_5b.branch1x1.conv.kernel: \(3, 3, 192, 64\) "
                     r"\(expected \(1, 1, 192, 64\)\)'\]"):
    inception.torch_state_dict_to_inception(state_dict)
