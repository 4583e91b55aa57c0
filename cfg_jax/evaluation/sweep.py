"""Evaluating a run across guidance strengths: sample each (classifier scale s, w), measure.

`evaluate` samples the run at every (s, w) of the grid, for each EMA asked for, measures
the samples against the run's data with a feature net (FID, IS, precision/recall, accuracy
on the intended labels) and writes the report. Its arguments are the flags of
`python -m cfg_jax.evaluate`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from cfg_jax import config_lib
from cfg_jax import data_sources
from cfg_jax import runs
from cfg_jax.evaluation import eval_classifier
from cfg_jax.evaluation import features
from cfg_jax.evaluation import inception
from cfg_jax.evaluation import metrics
from cfg_jax.evaluation import real_data
from cfg_jax.evaluation import report

OUT_DEFAULT = "eval"  # under the workdir


def check_options(*, ws: Sequence[float], num_samples: int, k: int, is_splits: int,
                  batch_size: int, feature_batch_size: int, num_real: int | None,
                  classifier_scales: Sequence[float] | None) -> None:
  """Raises ValueError naming the first bad flag and what it allows."""
  if not ws or not all(math.isfinite(w) for w in ws):
    raise ValueError(f"--w must be a non-empty list of finite numbers, got {list(ws)}.")
  if classifier_scales is not None and not (
      classifier_scales and all(math.isfinite(s) for s in classifier_scales)):
    raise ValueError(f"--classifier_scale must be a non-empty list of finite numbers, got "
                     f"{list(classifier_scales)}.")
  if num_samples < 2:
    raise ValueError(f"--num_samples must be >= 2 (FID needs a covariance), got {num_samples}.")
  for name, value in (("batch_size", batch_size), ("feature_batch_size", feature_batch_size)):
    if value < 1:
      raise ValueError(f"--{name} must be >= 1, got {value}.")
  if num_real is not None and num_real < 2:
    raise ValueError(f"--num_real must be >= 2, got {num_real}.")
  smallest = min(num_samples, num_real or num_samples)
  if not 1 <= k < smallest:
    raise ValueError(f"--k must lie in [1, {smallest - 1}] (fewer than --num_samples and "
                     f"--num_real), got {k}.")
  if not 1 <= is_splits <= num_samples:
    raise ValueError(f"--is_splits must lie in [1, --num_samples={num_samples}], got {is_splits}.")


def make_feature_net(run_config: ml_collections.ConfigDict, *,
                     inception_weights: epath.PathLike | None,
                     eval_classifier_config: ml_collections.ConfigDict | None,
                     eval_classifier_dir: epath.PathLike) -> features.FeatureNet:
  """InceptionV3 when its weights are given, else points (toy2d) or the eval classifier."""
  source, points = run_config.data.source, data_sources.holds_points(run_config.data)
  if inception_weights is not None:
    if points:
      raise ValueError(f"--inception_weights is for images; {source} is measured on its "
                       f"points.")
    return inception.inception_net(inception_weights)
  if points:
    return features.points_net(run_config)
  if source.startswith("imagenet"):
    raise ValueError(f"config.data.source={source!r} needs --inception_weights: FID and IS on "
                     f"ImageNet are defined with the FID InceptionV3 "
                     f"({inception.FID_INCEPTION_FILE}).")
  if eval_classifier_config is None:
    eval_classifier_config = config_lib.load_config_file(
        eval_classifier.DEFAULT_CONFIG, flag="--eval_classifier_config")
  return eval_classifier.eval_classifier_net(eval_classifier_config, run_config,
                                             cache_root=eval_classifier_dir)


def sample_metrics(x: np.ndarray, labels: np.ndarray, net: features.FeatureNet,
                   real: real_data.RealStatistics, *, k: int, is_splits: int,
                   batch_size: int) -> dict[str, float]:
  """FID, IS (mean, std), precision, recall and accuracy of samples x with intended labels."""
  sample_features, logits = features.compute_features(net, features.as_stored(x),
                                                      batch_size=batch_size)
  fid = metrics.frechet_distance(*metrics.feature_statistics(sample_features), real.mu,
                                 real.sigma)
  inception_score, inception_score_std = metrics.inception_score(logits, splits=is_splits)
  n = min(len(sample_features), len(real.features))  # Kynkäänniemi et al. compare equal numbers
  precision, recall = metrics.precision_recall(real.features[:n], sample_features[:n], k=k)
  accuracy = (float(np.mean(np.argmax(logits, -1) == labels)) if net.logits_are_labels
              else math.nan)
  return dict(fid=fid, inception_score=inception_score, inception_score_std=inception_score_std,
              precision=precision, recall=recall, accuracy=accuracy, num_samples=len(x))


def evaluate(workdir: epath.PathLike, *, ws: Sequence[float], num_samples: int,
             spec_overrides: Mapping[str, Any] | None = None,
             out: epath.PathLike | None = None, step: int | None = None,
             classifier_workdir: epath.PathLike | None = None,
             classifier_scales: Sequence[float] | None = None,
             guide_workdir: epath.PathLike | None = None, guide_step: int | None = None,
             inception_weights: epath.PathLike | None = None,
             eval_classifier_config: ml_collections.ConfigDict | None = None,
             eval_classifier_dir: epath.PathLike | None = None, num_real: int | None = None,
             k: int = 3, is_splits: int = 10, batch_size: int = 256,
             feature_batch_size: int = 64, seed: int = 0,
             emas: Sequence[str] | None = None) -> list[dict[str, Any]]:
  """Samples the run in `workdir` at every (s, w) for each EMA, measures the samples, writes
  the results.

  Arguments are the flags of `python -m cfg_jax.evaluate` of the same names but
  ws (--w), classifier_scales (--classifier_scale) and spec_overrides (the
  --sampling.<field> values, applied to the run's config.sampling) and emas (--ema: the
  reconstructed power EMAs to compare; None: the checkpoint's EMA); None means the flag's
  default. Returns the rows of metrics.csv.
  """
  check_options(ws=ws, num_samples=num_samples, k=k, is_splits=is_splits,
                batch_size=batch_size, feature_batch_size=feature_batch_size, num_real=num_real,
                classifier_scales=classifier_scales)
  report.require_matplotlib()
  workdir = epath.Path(workdir)
  ema_runs = {name: runs.load_run(workdir, step=step, ema=name) for name in emas or [None]}
  run = next(iter(ema_runs.values()))
  spec = runs.sampling_spec(run.config, spec_overrides)
  classifier = runs.load_classifier(classifier_workdir, classifier_scales, run_config=run.config)
  guide = (None if guide_workdir is None else
           runs.load_guide(guide_workdir, step=guide_step, run=run))
  net = make_feature_net(run.config, inception_weights=inception_weights,
                         eval_classifier_config=eval_classifier_config,
                         eval_classifier_dir=eval_classifier_dir or workdir / "eval_classifier")
  real = real_data.real_statistics(net, run.config, num_real=num_real,
                                   cache_dir=workdir / "fid_stats", batch_size=feature_batch_size)
  labels = runs.make_labels(run.config.data.num_classes, num_samples=num_samples)
  sample_fn = runs.make_run_sample_fn(run, spec, classifier=classifier, guide=guide)
  rows = []
  for name, ema_run in ema_runs.items():
    for scale, w, x in runs.sample_guidance_grid(
        sample_fn, ema_run, labels, ws=ws, classifier=classifier,
        classifier_scales=classifier_scales, guide=guide, batch_size=batch_size, seed=seed):
      row = {"ema": name or report.CHECKPOINT_EMA, "w": w, "classifier_scale": scale,
             **sample_metrics(x, labels, net, real, k=k, is_splits=is_splits,
                              batch_size=feature_batch_size)}
      logging.info("%s w=%g s=%s: %s", row["ema"], w, scale,
                   {c: row[c] for c in report.COLUMNS[3:]})
      rows.append(row)
  if jax.process_index() == 0:
    guided_by = ("" if guide is None else
                 f"; autoguidance by {guide_workdir} at step {guide.step} in place of ∅")
    notes = [f"{num_samples} samples per row, labels spread evenly over "
             f"{run.config.data.num_classes} classes; T = {spec.num_steps} steps, sampler "
             f"{spec.sampler}, v = {spec.v}, guidance {runs.describe_guidance(spec)}"
             f"{guided_by}, seed {seed}.",
             f"Features: {net.name}; data: {run.config.data.source!r}, {len(real.features)} "
             f"examples; precision/recall with k = {k}; IS over {is_splits} splits."]
    if "eval_classifier_held_out_accuracy" in net.info:
      notes.append(f"Eval classifier {net.info['eval_classifier_dir']}: held-out accuracy "
                   f"{net.info['eval_classifier_held_out_accuracy']:.4f}.")
    report.write_results(rows, out or workdir / OUT_DEFAULT, notes=notes,
                         title=f"{workdir.name} at step {run.step}")
  return rows
