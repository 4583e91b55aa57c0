"""The run's data as evaluation reads it, and the cached feature statistics of that data.

The data are read as they are (no flips), in the dataset's order, so the first n
examples are the same on every call. `real_statistics` caches the features of the first
num_real examples and their FID statistics, keyed by the feature net's weights, the data
and num_real.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from typing import Any, Iterator

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from cfg_jax import files
from cfg_jax import input_pipeline
from cfg_jax.evaluation import features
from cfg_jax.evaluation import metrics

DEFAULT_NUM_REAL = 50_000  # the FID convention


def data_chunks(dataset: input_pipeline.Dataset, num: int, *, chunk: int = 1024
                ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """The first `num` examples of the dataset's order, `chunk` at a time, as (x, labels).

  They are distinct when num <= len(dataset): epoch 0 is a permutation.
  """
  for start in range(0, num, chunk):
    batch = dataset.batch(start // chunk, batch_size=chunk)  # stream positions [start, …)
    yield batch["x"][:num - start], batch["label"][:num - start]


def read_examples(dataset: input_pipeline.Dataset, num: int) -> tuple[np.ndarray, np.ndarray]:
  """`data_chunks` concatenated: the first `num` examples as (x, labels)."""
  xs, labels = zip(*data_chunks(dataset, num))
  return np.concatenate(xs), np.concatenate(labels)


def eval_data_config(run_config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The run's config with flips off: evaluation reads the data as it is."""
  config = run_config.copy_and_resolve_references()
  config.data.random_flip = False
  return config


def data_fields(run_config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The config fields that fix which examples a run's data are, for cache keys."""
  d = run_config.data
  return {"source": d.source, "image_size": d.image_size, "channels": d.channels,
          "num_classes": d.num_classes, "tfds_split": d.tfds_split, "seed": run_config.seed,
          "toy2d": [d.toy2d_num_examples, d.toy2d_radius, d.toy2d_std]}



@dataclasses.dataclass(frozen=True)
class RealStatistics:
  """The data's features under a feature net and their FID statistics."""
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray


def real_statistics(net: features.FeatureNet, run_config: ml_collections.ConfigDict, *,
                    num_real: int | None, cache_dir: epath.PathLike,
                    batch_size: int) -> RealStatistics:
  """Features of the first num_real examples of the data (all, if fewer) and their statistics.

  Cached in `cache_dir/<net>-<hash>.npz`, the hash covering the net's weights, the data
  and num_real.
  """
  dataset = input_pipeline.create_dataset(eval_data_config(run_config),
                                          process_index=0, process_count=1)
  num = min(num_real or DEFAULT_NUM_REAL, len(dataset))
  description = json.dumps({"net": net.name, "fingerprint": net.fingerprint,
                            "data": data_fields(run_config), "num_real": num},
                           sort_keys=True)
  path = (epath.Path(cache_dir) /
          f"{net.name}-{hashlib.sha256(description.encode()).hexdigest()[:12]}.npz")
  if path.exists():
    with np.load(io.BytesIO(path.read_bytes())) as cached:
      if str(cached["description"]) == description:
        logging.info("Restored the statistics of %d data examples from %s.", num, path)
        return RealStatistics(cached["mu"], cached["sigma"], cached["features"])
  logging.info("Computing %s features of %d data examples.", net.name, num)
  data_features = np.concatenate([
      features.compute_features(net, features.as_stored(x), batch_size=batch_size)[0]
      for x, _ in data_chunks(dataset, num, chunk=max(batch_size, 1024))])
  mu, sigma = metrics.feature_statistics(data_features)
  if jax.process_index() == 0:
    files.write_npz_atomic(path, mu=mu, sigma=sigma, features=data_features,
                           description=description)
  return RealStatistics(mu, sigma, data_features)
