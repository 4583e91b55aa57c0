"""A run's metrics as TensorBoard event files and console lines, without TensorFlow.

An event file is a sequence of TFRecords (length, masked CRC-32C of the length, an
`Event` protocol buffer, its masked CRC-32C), each Event holding a `Summary`: scalars as
`simple_value`, images as PNG, text as a string tensor of the "text" plugin. The protocol
buffers and the CRC come from the `tensorboard` package, which needs no TensorFlow.
Files are written through etils.epath, so a `gs://` logdir works like a local one.
"""
from __future__ import annotations

import itertools
import os
import socket
import struct
import time
from typing import Any, Mapping

from absl import logging
from etils import epath
import numpy as np
from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.compat.proto import tensor_pb2
from tensorboard.compat.proto import tensor_shape_pb2
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import masked_crc32c

from cfg_jax import files
from cfg_jax import visualization


_FILE_NUMBERS = itertools.count()  # tells apart the files of one process in one second


def _record(data: bytes) -> bytes:
  """One TFRecord: the framing TensorBoard's reader expects around each Event."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


class SummaryWriter:
  """Writes scalars, images and text to one event file in `logdir`.

  Events are buffered and written by `flush()`. On a local disk each flush appends to the
  file; object stores (`gs://`, ...) cannot append, so there each flush rewrites the
  whole file, which stays small (scalars and a few sample grids).
  With `just_logging=True` (hosts other than the first) nothing is written to disk and
  scalars only go to the log.
  """

  def __init__(self, logdir: epath.PathLike, *, just_logging: bool = False):
    self._just_logging = just_logging
    self._pending: list[bytes] = []
    self._written = b""
    if just_logging:
      return
    logdir = epath.Path(logdir)
    logdir.mkdir(parents=True, exist_ok=True)
    self.path = logdir / (f"events.out.tfevents.{int(time.time()):010d}."
                          f"{socket.gethostname()}.{os.getpid()}.{next(_FILE_NUMBERS)}")
    self._appendable = files.is_local(self.path)
    self._add(event_pb2.Event(wall_time=time.time(), file_version="brain.Event:2"))
    self.flush()

  def _add(self, event: event_pb2.Event) -> None:
    if not self._just_logging:
      self._pending.append(_record(event.SerializeToString()))

  def _add_values(self, step: int, values: list[summary_pb2.Summary.Value]) -> None:
    self._add(event_pb2.Event(wall_time=time.time(), step=int(step),
                              summary=summary_pb2.Summary(value=values)))

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """Scalars under their names; also logged as one line."""
    logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in scalars.items()))
    self._add_values(step, [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
                            for k, v in scalars.items()])

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """uint8 images [H, W, C] (C = 1, 3 or 4), stored as PNG."""
    values = []
    for tag, image in images.items():
      image = np.asarray(image)
      if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Image {tag!r} must be uint8 [H, W, C] with C in (1, 3, 4), got "
                         f"{image.dtype} {image.shape}.")
      height, width, channels = image.shape
      values.append(summary_pb2.Summary.Value(tag=tag, image=summary_pb2.Summary.Image(
          height=height, width=width, colorspace=channels,
          encoded_image_string=visualization.png_bytes(image))))
    self._add_values(step, values)

  def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
    """Markdown strings, shown in TensorBoard's Text tab."""
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="text"))
    self._add_values(step, [summary_pb2.Summary.Value(
        tag=tag, metadata=metadata,
        tensor=tensor_pb2.TensorProto(dtype=7,  # DT_STRING
                                      tensor_shape=tensor_shape_pb2.TensorShapeProto(),
                                      string_val=[text.encode()]))
        for tag, text in texts.items()])

  def write_hparams(self, hparams: Mapping[str, Any]) -> None:
    """The run's hyperparameters as a two-column markdown table (Text tab, step 0)."""
    rows = "\n".join(f"| {k} | {v} |" for k, v in hparams.items())
    self.write_texts(0, {"hparams": "| field | value |\n|---|---|\n" + rows})

  def flush(self) -> None:
    if self._just_logging or not self._pending:
      return
    data = b"".join(self._pending)
    self._pending = []
    if self._appendable:
      with self.path.open("ab") as f:
        f.write(data)
    else:
      self._written += data
      self.path.write_bytes(self._written)

  def close(self) -> None:
    self.flush()
