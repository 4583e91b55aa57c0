"""Pictures of samples: PNG grids with one row per class, and scatter plots for 2-D data."""
from __future__ import annotations

import io

from etils import epath
import numpy as np
from PIL import Image

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


def write_png(array_or_figure, path: epath.PathLike) -> None:
  """Writes a uint8 [H, W, C] array or a matplotlib figure as PNG (local or gs:// path)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  if isinstance(array_or_figure, np.ndarray):
    image = array_or_figure[..., 0] if array_or_figure.shape[-1] == 1 else array_or_figure
    Image.fromarray(image).save(buffer, format="PNG")
  else:
    array_or_figure.savefig(buffer, format="png", dpi=100)
  files.write_bytes_atomic(path, buffer.getvalue())


def save_samples(x: np.ndarray, labels: np.ndarray, path: epath.PathLike, *,
                 num_classes: int, title: str = "") -> None:
  """Writes samples to a PNG: an image grid for [N, H, W, C], a scatter plot for [N, 2]."""
  if x.ndim == 4:
    write_png(image_grid(x, labels, num_classes), path)
    return
  import matplotlib
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(4, 4))
  for k in range(num_classes):
    ax.scatter(*x[labels == k].T, s=4, alpha=0.6, label=str(k))
  ax.set_aspect("equal")
  ax.legend(markerscale=3, fontsize=7)
  ax.set_title(title)
  write_png(fig, path)
  plt.close(fig)
