"""Image preprocessing: any uint8 image to the example shape (image_size, image_size, channels).

A 28x28 image meets image_size 32 by padding with the background (black, which becomes
-1: the usual MNIST-at-32 convention, whatever the source); any other size is
center-cropped to a square and area-resized (PIL's BOX filter). Gray, RGB and RGBA
images are converted to the number of channels asked for.
"""
from __future__ import annotations

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageOps


def fit(image: np.ndarray, size: int) -> np.ndarray:
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


def convert_channels(image: np.ndarray, channels: int) -> np.ndarray:
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


def preprocess(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """uint8 [H, W, C] to the uint8 example shape (image_size, image_size, channels)."""
  size, _, channels = shape
  return fit(convert_channels(np.asarray(image, np.uint8), channels), size)


def open_image(path: epath.Path) -> Image.Image:
  """The decoded image, upright (photos stored sideways carry their rotation in EXIF)."""
  with path.open("rb") as f, Image.open(f) as image:
    return ImageOps.exif_transpose(image)
