"""The event files are read back by TensorBoard's own reader."""
import io
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator

from cfg_jax import metric_writer


def read_events(logdir) -> event_accumulator.EventAccumulator:
  """Everything TensorBoard loads from `logdir` (scalars, every image, every tensor)."""
  accumulator = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0,
                                  event_accumulator.SCALARS: 0})
  accumulator.Reload()
  return accumulator


def test_tensorboard_reads_scalars_images_and_text_written_over_several_flushes(tmp_path):
  writer = metric_writer.SummaryWriter(tmp_path)
  writer.write_hparams({"training.p_uncond": 0.1, "sampling.w": (0., 2.)})
  writer.write_scalars(1, {"loss": 0.5, "learning_rate": 1e-4})
  writer.flush()
  grid = np.arange(6 * 8 * 3, dtype=np.uint8).reshape(6, 8, 3)
  writer.write_images(2, {"samples/w2": grid, "gray": np.zeros((4, 5, 1), np.uint8)})
  writer.write_scalars(2, {"loss": 0.25})
  writer.close()

  events = read_events(tmp_path)
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [(1, 0.5), (2, 0.25)]
  assert events.Scalars("learning_rate")[0].value == pytest.approx(1e-4)
  image = events.Images("samples/w2")[0]
  assert (image.step, image.width, image.height) == (2, 8, 6)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))),
                                grid)
  text = events.Tensors("hparams")[0].tensor_proto.string_val[0].decode()
  assert "| training.p_uncond | 0.1 |" in text and "| sampling.w | (0.0, 2.0) |" in text
  assert len(list(tmp_path.glob("events.out.tfevents.*"))) == 1


def test_two_writers_of_one_process_write_two_files(tmp_path):
  first, second = metric_writer.SummaryWriter(tmp_path), metric_writer.SummaryWriter(tmp_path)
  assert first.path != second.path


def test_just_logging_writes_no_file(tmp_path):
  writer = metric_writer.SummaryWriter(tmp_path / "tb", just_logging=True)
  writer.write_scalars(1, {"loss": 1.})
  writer.close()
  assert not (tmp_path / "tb").exists()


def test_images_must_be_uint8_hwc():
  writer = metric_writer.SummaryWriter("unused", just_logging=True)
  with pytest.raises(ValueError, match=r"Image 'x' must be uint8 \[H, W, C\]"):
    writer.write_images(0, {"x": np.zeros((4, 4), np.float32)})


def test_writing_imports_no_tensorflow(tmp_path):
  code = ("import sys; from cfg_jax import metric_writer; import numpy as np; "
          f"w = metric_writer.SummaryWriter({str(tmp_path)!r}); w.write_scalars(0, {{'a': 1.}}); "
          "w.write_images(0, {'i': np.zeros((2, 2, 1), np.uint8)}); w.close(); "
          "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'")
  subprocess.run([sys.executable, "-c", code], check=True)
