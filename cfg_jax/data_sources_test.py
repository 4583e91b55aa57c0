"""Tests of the data sources (mnist5k, folders, tfds, toy2d), read through `create_dataset`."""
from __future__ import annotations

import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from cfg_jax import data_sources
from cfg_jax import input_pipeline
from cfg_jax import test_configs


def _create(config):
  return input_pipeline.create_dataset(config, process_index=0, process_count=1)


def test_mnist5k_loads_5000_padded_digits():
  mnist5k = _create(test_configs.with_data())
  batch = mnist5k.batch(0, batch_size=len(mnist5k))
  x, labels = batch["x"], batch["label"]
  assert (len(mnist5k), mnist5k.num_classes, mnist5k.example_shape) == (5000, 10, (32, 32, 1))
  assert x.shape == (5000, 32, 32, 1) and x.dtype == np.float32 and labels.dtype == np.int32
  assert x.min() == -1. and x.max() == 1.
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 500))
  # The 28x28 digits sit in the middle, padded with the background value -1.
  border = np.ones((32, 32), bool)
  border[2:30, 2:30] = False
  assert np.all(x[:, border] == -1.)
  assert np.all(x[:, 2:30, 2:30].max(axis=(1, 2, 3)) > 0.)


def test_mnist5k_resize_and_channels():
  batch = _create(test_configs.with_data(image_size=16, channels=3)).batch(0, batch_size=64)
  assert batch["x"].shape == (64, 16, 16, 3)
  assert -1. <= batch["x"].min() and batch["x"].max() <= 1.
  np.testing.assert_array_equal(batch["x"][..., 0], batch["x"][..., 2])


def _write_image(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(array).save(path)


@pytest.fixture
def folder(tmp_path):
  """Two classes: 'cat' (sorted first, label 0) is solid red, 'dog' (label 1) white."""
  tmp_path = tmp_path / "pets"
  red = lambda h, w: np.broadcast_to(np.array([255, 0, 0], np.uint8), (h, w, 3)).copy()
  _write_image(tmp_path / "cat" / "a.png", red(20, 40))
  _write_image(tmp_path / "cat" / "b.png", red(33, 17))
  _write_image(tmp_path / "cat" / "nested" / "c.png", red(8, 8))
  _write_image(tmp_path / "dog" / "a.png", np.full((28, 28), 255, np.uint8))
  _write_image(tmp_path / "dog" / "b.png", np.full((50, 50, 3), 255, np.uint8))
  wide = np.zeros((20, 60), np.uint8)  # white only in the center square, which is kept
  wide[:, 20:40] = 255
  _write_image(tmp_path / "dog" / "wide.png", wide)
  (tmp_path / "dog" / "notes.txt").write_text("not an image")
  return tmp_path


@pytest.mark.parametrize("channels, red", [(3, [1., -1., -1.]), (1, [76 / 127.5 - 1.])])
def test_folder_source(folder, channels, red):
  ds = _create(test_configs.with_data(source=f"folder:{folder}", num_classes=2, image_size=16,
                                      channels=channels, resize=True))
  batch = ds.batch(0, batch_size=6)
  assert (len(ds), ds.num_classes) == (6, 2)
  assert batch["x"].shape == (6, 16, 16, channels)
  np.testing.assert_array_equal(np.sort(batch["label"]), [0, 0, 0, 1, 1, 1])
  for x, label in zip(batch["x"], batch["label"]):
    np.testing.assert_allclose(x, np.broadcast_to(red if label == 0 else 1., x.shape), atol=1e-6)


def test_folder_random_access_matches_in_memory(folder, monkeypatch):
  config = test_configs.with_data(source=f"folder:{folder}", num_classes=2, image_size=8,
                                  random_flip=True, resize=True)
  in_memory = _create(config)
  monkeypatch.setattr(data_sources, "_MAX_IN_MEMORY_BYTES", 0)
  random_access = _create(config)
  for step in range(3):
    a, b = in_memory.batch(step, batch_size=4), random_access.batch(step, batch_size=4)
    np.testing.assert_array_equal(a["x"], b["x"])
    np.testing.assert_array_equal(a["label"], b["label"])


@pytest.mark.parametrize("in_memory", [True, False])
def test_folder_of_mixed_sizes_is_refused_unless_resize(tmp_path, monkeypatch, in_memory):
  for i, (h, w) in enumerate([(12, 12), (12, 12), (12, 20)]):
    _write_image(tmp_path / "digits" / str(i % 2) / f"{i}.png", np.zeros((h, w), np.uint8))
  if not in_memory:  # the odd image is met by the step that reads it
    monkeypatch.setattr(data_sources, "_MAX_IN_MEMORY_BYTES", 0)
  config = test_configs.with_data(source=f"folder:{tmp_path / 'digits'}", num_classes=2,
                                  image_size=8)
  with pytest.raises(ValueError, match=r"mixed sizes: .*2\.png is 20x12, .*0\.png is 12x12\. "
                                       r"Set config\.data\.resize=True"):
    _create(config).batch(0, batch_size=3)
  config.data.resize = True
  assert _create(config).batch(0, batch_size=3)["x"].shape == (3, 8, 8, 1)


def test_folder_of_one_size_needs_no_resize(tmp_path):
  for i in range(4):
    _write_image(tmp_path / "digits" / str(i % 2) / f"{i}.png", np.zeros((28, 28), np.uint8))
  config = test_configs.with_data(source=f"folder:{tmp_path / 'digits'}", num_classes=2)
  batch = _create(config).batch(0, batch_size=4)
  assert batch["x"].shape == (4, 32, 32, 1) and np.all(batch["x"] == -1.)


def _fail(*args, **kwargs):
  raise AssertionError("this path must not be taken")


def test_tfds_mnist_in_memory(monkeypatch):
  monkeypatch.setattr(tfds, "data_source", _fail)
  with tfds.testing.mock_data(num_examples=20):
    ds = _create(test_configs.with_data(source="mnist"))
  batch = ds.batch(0, batch_size=20)
  assert len(ds) == 20 and ds.example_shape == (32, 32, 1)
  assert batch["x"].shape == (20, 32, 32, 1)
  assert -1. <= batch["x"].min() and batch["x"].max() <= 1.
  assert np.all(batch["x"][:, :2] == -1.)  # padded like mnist5k
  assert np.all((0 <= batch["label"]) & (batch["label"] < 10))


def test_tfds_variable_size_images_use_random_access(monkeypatch):
  monkeypatch.setattr(tfds, "load", _fail)
  config = test_configs.with_data(source="imagenet2012", num_classes=1000, image_size=16,
                                  channels=3)
  with tfds.testing.mock_data(num_examples=6):
    with pytest.raises(ValueError, match=r"'imagenet2012' has images of varying sizes .* set "
                                         r"config\.data\.resize=True"):
      _create(config)
    config.data.resize = True
    ds = _create(config)
    batch = ds.batch(0, batch_size=6)  # reads go through tfds.data_source
  assert len(ds) == 6 and batch["x"].shape == (6, 16, 16, 3)
  assert -1. <= batch["x"].min() and batch["x"].max() <= 1.
  assert np.all((0 <= batch["label"]) & (batch["label"] < 1000))


def test_toy2d_matches_its_mixture():
  config = test_configs.with_data(source="toy2d", num_classes=4, toy2d_num_examples=20_000)
  mixture = data_sources.toy2d_mixture(config)
  assert mixture.means.shape == (4, 2) and mixture.covs.shape == (4, 2, 2)
  np.testing.assert_allclose(np.linalg.norm(mixture.means, axis=-1), config.data.toy2d_radius)
  np.testing.assert_allclose(mixture.probs.sum(), 1.)
  ds = _create(config)
  batch = ds.batch(0, batch_size=len(ds))
  assert ds.example_shape == (2,) and batch["x"].shape == (20_000, 2)
  for k in range(4):
    x = batch["x"][batch["label"] == k]
    np.testing.assert_allclose(len(x) / len(ds), mixture.probs[k], atol=0.02)
    np.testing.assert_allclose(x.mean(0), mixture.means[k], atol=0.01)
    np.testing.assert_allclose(np.cov(x.T), mixture.covs[k], atol=0.002)


# Errors.


def test_unknown_source():
  with pytest.raises(ValueError, match=r"config.data.source='mnist_5k' is not a known source.*"
                                       r"allowed are 'mnist5k', 'toy2d', 'folder:<path>'"):
    _create(test_configs.with_data(source="mnist_5k"))


def test_tfds_errors():
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(ValueError, match=r"config.data.num_classes=5 but source 'cifar10' has 10"):
      _create(test_configs.with_data(source="cifar10", num_classes=5, channels=3))
    with pytest.raises(ValueError, match=r"'glue/cola' is not an image-classification dataset"):
      _create(test_configs.with_data(source="glue/cola", num_classes=2))


def test_folder_errors(tmp_path, folder):
  with pytest.raises(FileNotFoundError, match=r"config.data.source='folder:.*missing'.*is not an "
                                              r"existing folder"):
    _create(test_configs.with_data(source=f"folder:{tmp_path / 'missing'}"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match=r"has no class sub-folders"):
    _create(test_configs.with_data(source=f"folder:{tmp_path / 'empty'}"))
  (tmp_path / "empty" / "only_class" / "sub").mkdir(parents=True)
  with pytest.raises(ValueError, match=r"class folder .*only_class has no images"):
    _create(test_configs.with_data(source=f"folder:{tmp_path / 'empty'}"))
  with pytest.raises(ValueError, match=r"config.data.num_classes=10 but source 'folder:.*' has 2"):
    _create(test_configs.with_data(source=f"folder:{folder}"))
