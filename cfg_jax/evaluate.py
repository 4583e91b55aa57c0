r"""FID, IS, precision/recall and accuracy of a run's samples across guidance strengths w.

    python -m cfg_jax.evaluate --workdir=runs/mnist --w=0,0.1,0.3,0.5,1,2,4 \
        --num_samples=1000 --steps=128 [--out=runs/mnist/eval]

For each w (and each classifier-guidance scale s, given --classifier_workdir and
--classifier_scale as in cfg_jax.sample) it samples --num_samples examples with the
labels spread evenly over the classes and measures them against the run's data:

  FID                  Fréchet distance of feature statistics; the data's (--num_real
                       examples) are cached in <workdir>/fid_stats.
  IS                   from the feature net's logits, mean ± std over --is_splits splits.
  precision, recall    k-NN manifolds (Kynkäänniemi et al. 2019), k = --k, on equal numbers
                       of data and sample features.
  accuracy             of the feature net on the intended labels (not for Inception, whose
                       1008 ImageNet outputs are not the data's classes).

Feature nets (cfg_jax.feature_nets): --inception_weights selects the FID InceptionV3
(required for imagenet sources); other images use the eval classifier of
--eval_classifier_config (the preset mnist_eval_classifier.py), trained on the run's data on
first use (minutes on a CPU) and cached in --eval_classifier_dir; toy2d uses the points themselves and the
exact class posterior. Images are rounded to uint8 before their features are taken, as
the data and saved samples are.

The newest checkpoint that restores is evaluated, or --step. Checkpoints are only read,
so a run can be evaluated while it trains.

Writes to --out (default <workdir>/eval): metrics.csv, metrics.md and fid_vs_is.png, FID
against IS with one curve per classifier scale whose points are labelled by w (the
paper's trade-off figure). w is the paper's: ε̃ = (1 + w) ε(z, c) − w ε(z, ∅).
"""
from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib.resources
import io
import json
import math
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
from ml_collections import config_flags
import ml_collections
import numpy as np

from cfg_jax import cli
from cfg_jax import config_lib
from cfg_jax import extras
from cfg_jax import feature_nets
from cfg_jax import files
from cfg_jax import input_pipeline
from cfg_jax import metrics
from cfg_jax import runs
from cfg_jax import runtime
from cfg_jax import visualization

DEFAULT_EVAL_CLASSIFIER_CONFIG = importlib.resources.files("cfg_jax.configs").joinpath(
    "mnist_eval_classifier.py")
DEFAULT_NUM_REAL = 50_000  # the FID convention
OUT_DEFAULT = "eval"  # under the workdir
COLUMNS = ("w", "classifier_scale", "fid", "inception_score", "inception_score_std",
           "precision", "recall", "accuracy", "num_samples")


@dataclasses.dataclass(frozen=True)
class RealStatistics:
  """The data's features under a feature net and their FID statistics."""
  mu: np.ndarray
  sigma: np.ndarray
  features: np.ndarray


def check_options(*, ws: Sequence[float], num_samples: int, steps: int, k: int, is_splits: int,
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
  for name, value in (("steps", steps), ("batch_size", batch_size),
                      ("feature_batch_size", feature_batch_size)):
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
                     eval_classifier_dir: epath.PathLike) -> feature_nets.FeatureNet:
  """InceptionV3 when its weights are given, else points (toy2d) or the eval classifier."""
  source = run_config.data.source
  if inception_weights is not None:
    if source == "toy2d":
      raise ValueError("--inception_weights is for images; toy2d is measured on its points.")
    return feature_nets.inception_net(inception_weights)
  if source == "toy2d":
    return feature_nets.points_net(run_config)
  if source.startswith("imagenet"):
    raise ValueError(f"config.data.source={source!r} needs --inception_weights: FID and IS on "
                     f"ImageNet are defined with the FID InceptionV3 "
                     f"({feature_nets.FID_INCEPTION_FILE}).")
  if eval_classifier_config is None:
    eval_classifier_config = config_lib.load_config_file(
        DEFAULT_EVAL_CLASSIFIER_CONFIG, flag="--eval_classifier_config")
  return feature_nets.eval_classifier_net(eval_classifier_config, run_config,
                                          cache_root=eval_classifier_dir)


def _feature_input(x: np.ndarray) -> np.ndarray:
  """Images rounded to uint8 and back, as saved samples and the data are; points as they are."""
  if x.ndim != 4:
    return x
  return visualization.to_uint8(x).astype(np.float32) / 127.5 - 1.


def real_statistics(net: feature_nets.FeatureNet, run_config: ml_collections.ConfigDict, *,
                    num_real: int | None, cache_dir: epath.PathLike,
                    batch_size: int) -> RealStatistics:
  """Features of the first num_real examples of the data (all, if fewer) and their statistics.

  Cached in `cache_dir/<net>-<hash>.npz`, the hash covering the net's weights, the data
  and num_real.
  """
  dataset = input_pipeline.create_dataset(feature_nets.eval_data_config(run_config),
                                          process_index=0, process_count=1)
  num = min(num_real or DEFAULT_NUM_REAL, len(dataset))
  description = json.dumps({"net": net.name, "fingerprint": net.fingerprint,
                            "data": feature_nets.data_fields(run_config), "num_real": num},
                           sort_keys=True)
  path = (epath.Path(cache_dir) /
          f"{net.name}-{hashlib.sha256(description.encode()).hexdigest()[:12]}.npz")
  if path.exists():
    with np.load(io.BytesIO(path.read_bytes())) as cached:
      if str(cached["description"]) == description:
        logging.info("Restored the statistics of %d data examples from %s.", num, path)
        return RealStatistics(cached["mu"], cached["sigma"], cached["features"])
  logging.info("Computing %s features of %d data examples.", net.name, num)
  features = np.concatenate([
      feature_nets.compute_features(net, _feature_input(x), batch_size=batch_size)[0]
      for x, _ in feature_nets.data_chunks(dataset, num, chunk=max(batch_size, 1024))])
  mu, sigma = metrics.feature_statistics(features)
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    np.savez(buffer, mu=mu, sigma=sigma, features=features, description=description)
    path.parent.mkdir(parents=True, exist_ok=True)
    files.write_bytes_atomic(path, buffer.getvalue())
  return RealStatistics(mu, sigma, features)


def sample_metrics(x: np.ndarray, labels: np.ndarray, net: feature_nets.FeatureNet,
                   real: RealStatistics, *, k: int, is_splits: int,
                   batch_size: int) -> dict[str, float]:
  """FID, IS (mean, std), precision, recall and accuracy of samples x with intended labels."""
  features, logits = feature_nets.compute_features(net, _feature_input(x), batch_size=batch_size)
  fid = metrics.frechet_distance(*metrics.feature_statistics(features), real.mu, real.sigma)
  inception_score, inception_score_std = metrics.inception_score(logits, splits=is_splits)
  n = min(len(features), len(real.features))  # Kynkäänniemi et al. compare equal numbers
  precision, recall = metrics.precision_recall(real.features[:n], features[:n], k=k)
  accuracy = (float(np.mean(np.argmax(logits, -1) == labels)) if net.logits_are_labels
              else math.nan)
  return dict(fid=fid, inception_score=inception_score, inception_score_std=inception_score_std,
              precision=precision, recall=recall, accuracy=accuracy, num_samples=len(x))


def _is_missing(value: Any) -> bool:
  """None (no classifier guidance) or NaN (no accuracy for Inception)."""
  return value is None or (isinstance(value, float) and math.isnan(value))


def write_results(rows: Sequence[dict[str, Any]], out: epath.PathLike, *, title: str,
                  notes: Sequence[str] = ()) -> None:
  """metrics.csv (a row per (w, s)), metrics.md (a table) and fid_vs_is.png in `out`."""
  out = epath.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
  writer.writeheader()
  for row in rows:
    writer.writerow({c: "" if _is_missing(row[c]) else row[c] for c in COLUMNS})
  files.write_text_atomic(out / "metrics.csv", buffer.getvalue())

  lines = [f"# Evaluation of {title}", "", *[f"- {note}" for note in notes], "",
           "| w | classifier scale | FID | IS | precision | recall | accuracy |",
           "|---:|---:|---:|---:|---:|---:|---:|"]
  for row in rows:
    scale, accuracy = row["classifier_scale"], row["accuracy"]
    lines.append(f"| {row['w']:g} | {'–' if _is_missing(scale) else f'{scale:g}'} | "
                 f"{row['fid']:.4g} | {row['inception_score']:.4g} ± "
                 f"{row['inception_score_std']:.2g} | {row['precision']:.3f} | "
                 f"{row['recall']:.3f} | {'–' if _is_missing(accuracy) else f'{accuracy:.3f}'} |")
  files.write_text_atomic(out / "metrics.md", "\n".join(lines) + "\n")
  _plot_fid_vs_is(rows, out / "fid_vs_is.png", title=title)


def _plot_fid_vs_is(rows: Sequence[dict[str, Any]], path: epath.Path, *, title: str) -> None:
  matplotlib = extras.require("matplotlib", extra="eval", purpose="The FID-against-IS plot")
  matplotlib.use("Agg")
  from matplotlib import pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 4.5))
  scales = list(dict.fromkeys(row["classifier_scale"] for row in rows))
  for scale in scales:
    curve = [row for row in rows if row["classifier_scale"] == scale]
    ax.plot([r["inception_score"] for r in curve], [r["fid"] for r in curve], marker="o",
            label="no classifier guidance" if scale is None else f"classifier scale {scale:g}")
    for r in curve:
      ax.annotate(f"w={r['w']:g}", (r["inception_score"], r["fid"]), textcoords="offset points",
                  xytext=(4, 4), fontsize=8)
  ax.margins(0.15)  # room for the w labels
  ax.set_xlabel("Inception Score")
  ax.set_ylabel("FID")
  ax.set_title(f"{title}: FID against IS across w", fontsize=9)
  if len(scales) > 1:
    ax.legend(fontsize=8)
  fig.tight_layout()
  visualization.write_png(fig, path)
  plt.close(fig)


def evaluate(workdir: epath.PathLike, *, ws: Sequence[float], num_samples: int, steps: int,
             out: epath.PathLike | None = None, step: int | None = None,
             classifier_workdir: epath.PathLike | None = None,
             classifier_scales: Sequence[float] | None = None,
             inception_weights: epath.PathLike | None = None,
             eval_classifier_config: ml_collections.ConfigDict | None = None,
             eval_classifier_dir: epath.PathLike | None = None, num_real: int | None = None,
             k: int = 3, is_splits: int = 10, batch_size: int = 256,
             feature_batch_size: int = 64, seed: int = 0, v: float | None = None,
             sampler: str | None = None, clip_x: bool | None = None) -> list[dict[str, Any]]:
  """Samples the run in `workdir` at every (s, w), measures the samples, writes the results.

  Arguments are the command-line flags (see the module docstring) of the same names but
  ws (--w), classifier_scales (--classifier_scale) and v (--sampling_v); None means the
  flag's default. Returns the rows of metrics.csv.
  """
  check_options(ws=ws, num_samples=num_samples, steps=steps, k=k, is_splits=is_splits,
                batch_size=batch_size, feature_batch_size=feature_batch_size, num_real=num_real,
                classifier_scales=classifier_scales)
  extras.require("matplotlib", extra="eval", purpose="The FID-against-IS plot")
  workdir = epath.Path(workdir)
  run = runs.load_run(workdir, step=step)
  classifier = cli.load_classifier(classifier_workdir, classifier_scales)
  net = make_feature_net(run.config, inception_weights=inception_weights,
                         eval_classifier_config=eval_classifier_config,
                         eval_classifier_dir=eval_classifier_dir or workdir / "eval_classifier")
  real = real_statistics(net, run.config, num_real=num_real, cache_dir=workdir / "fid_stats",
                         batch_size=feature_batch_size)
  labels = runs.make_labels(run.config.data.num_classes, num_samples=num_samples)
  sample_fn = runs.make_run_sample_fn(run, num_steps=steps, v=v, sampler=sampler, clip_x=clip_x,
                                      classifier=classifier)
  rows = []
  for scale, w in cli.guidance_grid(ws, classifier_scales):
    x = runs.sample_in_batches(
        sample_fn, run.params, labels, w=w, batch_size=batch_size, seed=seed,
        classifier_params=None if classifier is None else classifier.params,
        classifier_scale=scale, progress=jax.process_index() == 0)
    row = {"w": w, "classifier_scale": scale,
           **sample_metrics(x, labels, net, real, k=k, is_splits=is_splits,
                            batch_size=feature_batch_size)}
    logging.info("w=%g s=%s: %s", w, scale, {c: row[c] for c in COLUMNS[2:]})
    rows.append(row)
  if jax.process_index() == 0:
    s = run.config.sampling
    notes = [f"{num_samples} samples per row, labels spread evenly over "
             f"{run.config.data.num_classes} classes; T = {steps} steps, sampler "
             f"{sampler or s.sampler}, v = {s.v if v is None else v}, seed {seed}.",
             f"Features: {net.name}; data: {run.config.data.source!r}, {len(real.features)} "
             f"examples; precision/recall with k = {k}; IS over {is_splits} splits."]
    if "eval_classifier_held_out_accuracy" in net.info:
      notes.append(f"Eval classifier {net.info['eval_classifier_dir']}: held-out accuracy "
                   f"{net.info['eval_classifier_held_out_accuracy']:.4f}.")
    write_results(rows, out or workdir / OUT_DEFAULT, notes=notes,
                  title=f"{workdir.name} at step {run.step}")
  return rows


def _define_flags() -> None:
  cli.define_sampling_flags(default_w=["0", "0.1", "0.3", "0.5", "1", "2", "4"],
                            out_default=OUT_DEFAULT, verb="evaluate")
  flags.DEFINE_integer("num_samples", 1000, "Samples per (w, s), spread evenly over the classes.")
  flags.DEFINE_string("inception_weights", None,
                      f"{feature_nets.FID_INCEPTION_FILE} (pytorch-fid), for Inception features.")
  config_flags.DEFINE_config_file("eval_classifier_config", str(DEFAULT_EVAL_CLASSIFIER_CONFIG),
                                  "The eval classifier for images without --inception_weights.")
  flags.DEFINE_string("eval_classifier_dir", None,
                      "Cache of eval classifiers, one per data source (default "
                      "<workdir>/eval_classifier).")
  flags.DEFINE_integer("num_real", None, f"Data examples for the statistics (default "
                       f"{DEFAULT_NUM_REAL:,} or the whole data if smaller).")
  flags.DEFINE_integer("k", 3, "Neighbours k of precision and recall.")
  flags.DEFINE_integer("is_splits", 10, "Splits of the Inception Score.")
  flags.DEFINE_integer("feature_batch_size", 64, "Examples per feature-net call.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  options = cli.sampling_options(OUT_DEFAULT)
  try:
    check_options(ws=options.ws, num_samples=f.num_samples, steps=options.steps, k=f.k,
                  is_splits=f.is_splits, batch_size=options.batch_size,
                  feature_batch_size=f.feature_batch_size, num_real=f.num_real,
                  classifier_scales=options.classifier_scales)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  runtime.set_up_process()
  with runtime.one_line_errors("cfg_jax.evaluate"):
    rows = evaluate(options.workdir, ws=options.ws, num_samples=f.num_samples,
                    steps=options.steps, out=options.out, step=options.step,
                    classifier_workdir=options.classifier_workdir,
                    classifier_scales=options.classifier_scales,
                    inception_weights=f.inception_weights,
                    eval_classifier_config=f.eval_classifier_config,
                    eval_classifier_dir=f.eval_classifier_dir, num_real=f.num_real, k=f.k,
                    is_splits=f.is_splits, batch_size=options.batch_size,
                    feature_batch_size=f.feature_batch_size, seed=options.seed, v=options.v,
                    sampler=options.sampler, clip_x=options.clip_x)
  if jax.process_index() == 0:
    print((options.out / "metrics.md").read_text())
    print(f"Wrote {len(rows)} rows to {options.out}: metrics.csv, metrics.md, fid_vs_is.png")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
