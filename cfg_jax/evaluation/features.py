"""What FID, IS and precision/recall are measured with: a feature net and its batched use.

A `FeatureNet` maps data in [-1, 1] to (features [B, D], logits [B, K]). Three kinds:

* `inception.inception_net`: the FID InceptionV3, for ImageNet-scale data (pool3
  features, logits of its 1008-way softmax layer).
* `eval_classifier.eval_classifier_net`: for MNIST-like data, a small clean-image CNN
  trained on the run's own data on first use and cached (penultimate features, class
  logits).
* `points_net` (here): toy2d. Features: the 2-D points themselves; logits: log p(c | x)
  of the exact mixture, the Bayes-optimal classifier.

Images are measured as they are stored (`as_stored`): rounded to uint8, as the data and
saved samples are.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cfg_jax import data_sources
from cfg_jax import mixture
from cfg_jax import parallel
from cfg_jax import visualization

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class FeatureNet:
  """A jitted map from a batch in [-1, 1] to (features [B, D], logits [B, K]).

  Attributes:
    name: what the features are, e.g. "inception_v3", "eval_classifier", "points".
    fingerprint: identifies the weights, so cached statistics of real data stay valid.
    apply: the jitted function.
    logits_are_labels: whether logit k is the data's class k (so accuracy on the
      intended labels means something; not for Inception's 1008 ImageNet outputs).
    info: facts for the report, e.g. the held-out accuracy of an eval classifier.
  """
  name: str
  fingerprint: str
  apply: Callable[[Array], tuple[Array, Array]]
  logits_are_labels: bool
  info: dict[str, Any] = dataclasses.field(default_factory=dict)


def compute_features(net: FeatureNet, x: np.ndarray, *, batch_size: int
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(features, logits) of x, `batch_size` at a time, sharded over the devices.

  The last batch is padded so every call has one shape and one compile
  (`parallel.apply_in_batches`).
  """
  if len(x) == 0:
    raise ValueError("compute_features needs at least one example.")
  features, logits = parallel.apply_in_batches(lambda k, batch: net.apply(batch),
                                               np.asarray(x, np.float32), batch_size=batch_size)
  return np.asarray(features, np.float32), np.asarray(logits, np.float32)


def as_stored(x: np.ndarray) -> np.ndarray:
  """Images rounded to uint8 and back, as saved samples and the data are; points as they are."""
  if x.ndim != 4:
    return x
  return visualization.to_uint8(x).astype(np.float32) / 127.5 - 1.


def points_net(run_config: ml_collections.ConfigDict) -> FeatureNet:
  """toy2d: features are the points, logits log p(c | x) of the exact mixture."""
  gmm = data_sources.toy2d_mixture(run_config)
  logits_fn = mixture.classifier_fn(gmm)

  @jax.jit
  def apply(x: Array) -> tuple[Array, Array]:
    # p(c | z_λ) at λ = 30 (σ² ≈ 1e-13) is the posterior of the clean point.
    return x, logits_fn(None, x, jnp.full(x.shape[:1], 30., jnp.float32))

  fingerprint = hashlib.sha256(json.dumps(
      [np.asarray(gmm.means).tolist(), np.asarray(gmm.covs).tolist()]).encode())
  return FeatureNet("points", fingerprint.hexdigest(), apply, logits_are_labels=True)

