"""The project's evaluator of a run's samples, for programs that measure many of them.

`Evaluator` holds the feature net of a run's data (the eval classifier for MNIST-like
images), the data's statistics and the intended labels (num_samples spread evenly over the
classes); `metrics` measures one set of samples as `python -m cfg_jax.evaluate` does (FID,
IS, precision/recall, accuracy on the intended labels), `floor` the same number of real
examples. The benchmarks of bench/ (quality, ablation, distillation, guidance) use it.
"""
from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from cfg_jax import input_pipeline
from cfg_jax import runs
from cfg_jax import visualization
from cfg_jax.evaluation import real_data
from cfg_jax.evaluation import sweep


def as_float(x: np.ndarray) -> np.ndarray:
  """Images as floats in [-1, 1]: uint8 ones mapped back, floats as they are."""
  return x.astype(np.float32) / 127.5 - 1. if x.dtype == np.uint8 else x


class Evaluator:
  """The evaluator for a run's data: the eval classifier, the data's statistics, and the
  intended labels (num_samples spread evenly over the classes), cached under cache_dir."""

  def __init__(self, run_config: Any, *, cache_dir: pathlib.Path, num_samples: int,
               batch_size: int = 500, eval_classifier_config: Any = None):
    """`eval_classifier_config` None is the preset configs/mnist_eval_classifier.py."""
    self.run_config, self.batch_size = run_config, batch_size
    self.net = sweep.make_feature_net(run_config, inception_weights=None,
                                      eval_classifier_config=eval_classifier_config,
                                      eval_classifier_dir=cache_dir / "eval_classifier")
    self.real = real_data.real_statistics(self.net, run_config, num_real=None,
                                          cache_dir=cache_dir / "fid_stats",
                                          batch_size=batch_size)
    self.labels = runs.make_labels(run_config.data.num_classes, num_samples=num_samples)

  def metrics(self, x: np.ndarray, labels: np.ndarray | None = None) -> dict[str, float]:
    """FID, IS, precision, recall and accuracy of images x ([-1, 1] floats or uint8)."""
    return sweep.sample_metrics(as_float(x), self.labels if labels is None else labels,
                                self.net, self.real, k=3, is_splits=10,
                                batch_size=self.batch_size)

  def floor(self) -> dict[str, float]:
    """The last num_samples examples of the data, measured as samples are; their accuracy
    is the eval classifier's on its own held-out examples."""
    dataset = input_pipeline.create_dataset(real_data.eval_data_config(self.run_config),
                                            process_index=0, process_count=1)
    n = len(self.labels)
    if n > len(dataset):
      raise ValueError(f"--samples_per_w={n} exceeds the {len(dataset)} examples of the data.")
    x, labels = real_data.read_examples(dataset, len(dataset))
    row = self.metrics(x[-n:], labels[-n:])
    row["accuracy"] = self.net.info["eval_classifier_held_out_accuracy"]
    return row


def write_class_grids(samples: dict[float, np.ndarray], labels: np.ndarray, out: pathlib.Path,
                      name: str, *, num_classes: int, ws: tuple[float, ...] = (0., 1., 3.),
                      per_class: int = 8) -> None:
  """grid_<name>_w<w>.png for each w of `ws` in `samples`: a row of the first `per_class`
  samples of each class."""
  keep = np.concatenate([np.flatnonzero(labels == c)[:per_class] for c in range(num_classes)])
  for w in ws:
    if w in samples:
      visualization.save_sample_picture(as_float(samples[w])[keep], labels[keep],
                                        out / f"grid_{name}_w{w:g}.png",
                                        num_classes=num_classes)
