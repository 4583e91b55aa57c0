"""The evaluation classifier for MNIST-like data: its features give FID and precision/recall,
its logits IS and accuracy.

`EvalClassifier` is a small clean-image CNN (the preset configs/mnist_eval_classifier.py)
trained on the run's own data on first use and cached. Features: its penultimate layer;
logits: its class logits. A dedicated CNN rather than the noisy ADM `Classifier`: small
and trained on clean images only, it trains in a fraction of the ADM classifier's time.
"""
from __future__ import annotations

import hashlib
import importlib.resources
import json
import re
import time
from typing import Any, Sequence

from absl import logging
from etils import epath
import flax
import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from cfg_jax import data_sources
from cfg_jax import files
from cfg_jax import input_pipeline
from cfg_jax import visualization
from cfg_jax.evaluation import features
from cfg_jax.evaluation import real_data

Array = jax.Array

DEFAULT_CONFIG = importlib.resources.files("cfg_jax.configs").joinpath(
    "mnist_eval_classifier.py")


class EvalClassifier(nn.Module):
  """A small clean-image CNN: x [B, H, W, C] in [-1, 1] -> (features [B, D], logits [B, K]).

  Per stage two 3x3 conv + ReLU and a 2x2 max-pool, then a dense ReLU layer whose output
  is the feature vector, dropout and the class logits. H, W must be multiples of
  2^len(channels).
  """
  num_classes: int
  channels: Sequence[int] = (16, 32)
  features: int = 128
  dropout: float = 0.3

  @nn.compact
  def __call__(self, x: Array, *, train: bool) -> tuple[Array, Array]:
    for i, ch in enumerate(self.channels):
      x = nn.relu(nn.Conv(ch, (3, 3), name=f"conv{i}_a")(x))
      x = nn.relu(nn.Conv(ch, (3, 3), name=f"conv{i}_b")(x))
      x = nn.max_pool(x, (2, 2), (2, 2))
    h = nn.relu(nn.Dense(self.features, name="penultimate")(x.reshape(x.shape[0], -1)))
    logits = nn.Dense(self.num_classes, name="logits")(
        nn.Dropout(self.dropout, deterministic=not train)(h))
    return h, logits


def eval_classifier_dir(cache_root: epath.PathLike, classifier_config: ml_collections.ConfigDict,
                        run_config: ml_collections.ConfigDict) -> epath.Path:
  """`<cache_root>/<source>-<hash of data and classifier config>`: one entry per data source."""
  key = json.dumps({"data": real_data.data_fields(run_config),
                    "classifier": classifier_config.to_dict()}, sort_keys=True, default=list)
  slug = re.sub(r"[^A-Za-z0-9._-]+", "_", run_config.data.source)
  return epath.Path(cache_root) / f"{slug}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def train_eval_classifier(classifier_config: ml_collections.ConfigDict,
                          run_config: ml_collections.ConfigDict) -> tuple[Any, float]:
  """Trains `EvalClassifier` on the run's data; returns (params, held-out accuracy).

  The last `training.holdout` examples of the data order are held out to measure the
  accuracy; the rest are read in batches with `input_pipeline.from_arrays`.
  """
  c, t = classifier_config, classifier_config.training
  dataset = input_pipeline.create_dataset(real_data.eval_data_config(run_config),
                                          process_index=0, process_count=1)
  if not 0 < t.holdout < len(dataset):
    raise ValueError(f"eval classifier training.holdout={t.holdout} must lie in "
                     f"(0, {len(dataset)}), the size of {run_config.data.source!r}.")
  x, labels = real_data.read_examples(dataset, len(dataset))
  num_classes = run_config.data.num_classes
  train_set = input_pipeline.from_arrays(visualization.to_uint8(x[:-t.holdout]),
                                         labels[:-t.holdout], num_classes=num_classes,
                                         seed=c.seed)
  model = EvalClassifier(num_classes, **c.model)
  rng = jax.random.PRNGKey(c.seed)
  params = model.init(rng, x[:1], train=False)["params"]
  tx = optax.adam(t.learning_rate)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state, batch, step):
    def loss_fn(params):
      _, logits = model.apply({"params": params}, batch["x"], train=True,
                              rngs={"dropout": jax.random.fold_in(rng, step)})
      return optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  for step, batch in train_set.iterate(0, batch_size=t.batch_size, stop_step=t.num_steps):
    params, opt_state, loss = train_step(params, opt_state, batch, step)
    if (step + 1) % max(t.num_steps // 5, 1) == 0:
      logging.info("eval classifier step %d/%d: loss %.4f", step + 1, t.num_steps, float(loss))
  net = _classifier_feature_net(model, params, "")
  _, logits = features.compute_features(net, x[-t.holdout:], batch_size=t.batch_size)
  return params, float(np.mean(np.argmax(logits, -1) == labels[-t.holdout:]))


def _classifier_feature_net(model: EvalClassifier, params: Any, fingerprint: str,
                            info: dict[str, Any] | None = None) -> features.FeatureNet:
  apply = jax.jit(lambda x: model.apply({"params": params}, x, train=False))
  return features.FeatureNet("eval_classifier", fingerprint, apply, logits_are_labels=True,
                             info=info or {})


def eval_classifier_net(classifier_config: ml_collections.ConfigDict,
                        run_config: ml_collections.ConfigDict, *,
                        cache_root: epath.PathLike) -> features.FeatureNet:
  """The eval classifier of the run's data: restored from its cache, else trained and cached.

  The cache is `eval_classifier_dir(cache_root, ...)`: `params.msgpack` and `info.json`
  (written last, so an interrupted training is redone).
  """
  if data_sources.holds_points(run_config.data):
    raise ValueError("the eval classifier is for images; points are measured by points_net.")
  directory = eval_classifier_dir(cache_root, classifier_config, run_config)
  model = EvalClassifier(run_config.data.num_classes, **classifier_config.model)
  info_path = directory / "info.json"
  if info_path.exists():
    info = json.loads(info_path.read_text())
    raw = (directory / "params.msgpack").read_bytes()
    params = flax.serialization.msgpack_restore(raw)
    logging.info("Restored the eval classifier from %s (held-out accuracy %.4f).", directory,
                 info["held_out_accuracy"])
  else:
    logging.info("Training the eval classifier of %r into %s.", run_config.data.source, directory)
    start = time.time()
    params, accuracy = train_eval_classifier(classifier_config, run_config)
    raw = flax.serialization.to_bytes(params)
    info = {"held_out_accuracy": accuracy, "train_seconds": round(time.time() - start, 1),
            "data": real_data.data_fields(run_config), "classifier": classifier_config.to_dict()}
    if jax.process_index() == 0:
      directory.mkdir(parents=True, exist_ok=True)
      files.write_bytes_atomic(directory / "params.msgpack", raw)
      files.write_text_atomic(info_path, json.dumps(info, indent=2, default=list))
    logging.info("Eval classifier trained in %.0f s, held-out accuracy %.4f.",
                 info["train_seconds"], accuracy)
  return _classifier_feature_net(model, params, hashlib.sha256(raw).hexdigest(),
                                 {"eval_classifier_dir": str(directory),
                                  "eval_classifier_held_out_accuracy": info["held_out_accuracy"]})

