"""Pictures of samples: PNG grids with one row per class, and scatter plots for 2-D data.

Drawn with PIL; matplotlib is only needed to save a figure made by the caller.
"""
from __future__ import annotations

import io

from etils import epath
import numpy as np
from PIL import Image
from PIL import ImageDraw

from cfg_jax import files


def to_uint8(x: np.ndarray) -> np.ndarray:
  """Images in [-1, 1] to uint8 in [0, 255] (values outside are clipped)."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.) * 127.5), 0, 255).astype(np.uint8)


def image_grid(images: np.ndarray, labels: np.ndarray, num_classes: int, *,
               pad: int = 2) -> np.ndarray:
  """uint8 [rows * (H + pad), cols * (W + pad), C]: row c holds the images of class c in order."""
  images = to_uint8(images)
  n, h, w, c = images.shape
  rows = [images[labels == k] for k in range(num_classes)]
  cols = max(1, max(len(r) for r in rows))
  grid = np.full((num_classes * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for k, row in enumerate(rows):
    for j, image in enumerate(row):
      top, left = pad + k * (h + pad), pad + j * (w + pad)
      grid[top:top + h, left:left + w] = image
  return grid


def png_bytes(image: np.ndarray) -> bytes:
  """A uint8 [H, W, C] image (C = 1, 3 or 4) encoded as PNG."""
  buffer = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
  return buffer.getvalue()


def write_png(array_or_figure, path: epath.PathLike) -> None:
  """Writes a uint8 [H, W, C] array or a matplotlib figure as PNG (local or gs:// path)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  if isinstance(array_or_figure, np.ndarray):
    data = png_bytes(array_or_figure)
  else:
    buffer = io.BytesIO()
    array_or_figure.savefig(buffer, format="png", dpi=100)
    data = buffer.getvalue()
  files.write_bytes_atomic(path, data)


# Matplotlib's tab10 colours, one per class (repeating after ten).
CLASS_COLORS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207))


def scatter_plot(points: np.ndarray, labels: np.ndarray, num_classes: int, *, title: str = "",
                 size: int = 400, margin: int = 24) -> np.ndarray:
  """uint8 [size, size, 3]: 2-D points as dots coloured by class, equal axes, a legend.

  The square view is centred on the points and spans their largest extent (plus 5%).
  """
  points = np.asarray(points, np.float64)
  image = Image.new("RGB", (size, size), (255, 255, 255))
  draw = ImageDraw.Draw(image)
  finite = np.isfinite(points).all(axis=1)
  if finite.any():
    lo, hi = points[finite].min(axis=0), points[finite].max(axis=0)
    center, half = (lo + hi) / 2, max(float(np.max(hi - lo)) / 2 * 1.05, 1e-6)
    scale = (size - 2 * margin) / (2 * half)
    for k in range(num_classes):
      color = CLASS_COLORS[k % len(CLASS_COLORS)]
      for x, y in points[finite & (labels == k)]:
        u, v = margin + (x - center[0] + half) * scale, margin + (center[1] + half - y) * scale
        draw.ellipse((u - 1.5, v - 1.5, u + 1.5, v + 1.5), fill=color)
  for k in range(num_classes):
    top = margin + 12 * k
    draw.rectangle((size - 34, top, size - 26, top + 8), fill=CLASS_COLORS[k % len(CLASS_COLORS)])
    draw.text((size - 22, top - 2), str(k), fill=(0, 0, 0))
  draw.text((4, 4), title, fill=(0, 0, 0))
  return np.asarray(image)


def save_sample_picture(x: np.ndarray, labels: np.ndarray, path: epath.PathLike, *,
                        num_classes: int, title: str = "") -> np.ndarray:
  """Writes samples to a PNG, an image grid for [N, H, W, C] or a scatter plot for [N, 2],
  and returns that picture as uint8 [H, W, C]."""
  if x.ndim == 4:
    picture = image_grid(x, labels, num_classes)
  else:
    picture = scatter_plot(x, labels, num_classes, title=title)
  write_png(picture, path)
  return picture
