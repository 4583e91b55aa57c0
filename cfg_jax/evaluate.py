r"""FID, IS, precision/recall and accuracy of a run's samples across guidance strengths w.

    python -m cfg_jax.evaluate --workdir=runs/mnist --w=0,0.1,0.3,0.5,1,2,4 \
        --num_samples=1000 --sampling.num_steps=128 [--out=runs/mnist/eval]

For each w (and each classifier-guidance scale s, given --classifier_workdir and
--classifier_scale as in cfg_jax.generate) it samples --num_samples examples with the
labels spread evenly over the classes, with the run's config.sampling overridden by any
--sampling.<field>=... (and a guide network, --guide_workdir/--guide_step, as in
cfg_jax.generate), for the checkpoint's EMA or for each of --ema (power EMAs of several
widths reconstructed by python -m cfg_jax.posthoc_ema: the best width differs with w), and
measures them against the run's data:

  FID                  Fréchet distance of feature statistics; the data's (--num_real
                       examples) are cached in <workdir>/fid_stats.
  IS                   from the feature net's logits, mean ± std over --is_splits splits.
  precision, recall    k-NN manifolds (Kynkäänniemi et al. 2019), k = --k, on equal numbers
                       of data and sample features.
  accuracy             of the feature net on the intended labels (not for Inception, whose
                       1008 ImageNet outputs are not the data's classes).

Feature nets (cfg_jax.evaluation): --inception_weights selects the FID InceptionV3
(required for imagenet sources); other images use the eval classifier of
--eval_classifier_config (the preset mnist_eval_classifier.py), trained on the run's data on
first use (minutes on a CPU) and cached in --eval_classifier_dir; toy2d uses the points
themselves and the exact class posterior. Images are rounded to uint8 before their
features are taken, as the data and saved samples are.

The newest checkpoint that restores is evaluated, or --step. Checkpoints are only read,
so a run can be evaluated while it trains.

Writes to --out (default <workdir>/eval): metrics.csv, metrics.md and fid_vs_is.png, FID
against IS with one curve per classifier scale whose points are labelled by w (the
paper's trade-off figure). w is the paper's: ε̃ = (1 + w) ε(z, c) − w ε(z, ∅).
"""
from __future__ import annotations

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from cfg_jax import cli
from cfg_jax import evaluation
from cfg_jax import runtime
from cfg_jax.evaluation import eval_classifier
from cfg_jax.evaluation import inception
from cfg_jax.evaluation import real_data
from cfg_jax.evaluation import sweep

PROGRAM = "cfg_jax.evaluate"

def _define_flags() -> None:
  cli.define_sampling_flags(PROGRAM, default_w=["0", "0.1", "0.3", "0.5", "1", "2", "4"],
                            out_default=sweep.OUT_DEFAULT, verb="evaluate")
  flags.DEFINE_integer("num_samples", 1000, "Samples per (w, s), spread evenly over the classes.")
  flags.DEFINE_string("inception_weights", None,
                      f"{inception.FID_INCEPTION_FILE} (pytorch-fid), for Inception features.")
  config_flags.DEFINE_config_file("eval_classifier_config", str(eval_classifier.DEFAULT_CONFIG),
                                  "The eval classifier for images without --inception_weights.")
  flags.DEFINE_string("eval_classifier_dir", None,
                      "Cache of eval classifiers, one per data source (default "
                      "<workdir>/eval_classifier).")
  flags.DEFINE_integer("num_real", None, f"Data examples for the statistics (default "
                       f"{real_data.DEFAULT_NUM_REAL:,} or the whole data if smaller).")
  flags.DEFINE_integer("k", 3, "Neighbours k of precision and recall.")
  flags.DEFINE_integer("is_splits", 10, "Splits of the Inception Score.")
  flags.DEFINE_integer("feature_batch_size", 64, "Examples per feature-net call.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  options = cli.sampling_options(sweep.OUT_DEFAULT)
  try:
    sweep.check_options(ws=options.ws, num_samples=f.num_samples, k=f.k,
                        is_splits=f.is_splits, batch_size=options.batch_size,
                        feature_batch_size=f.feature_batch_size, num_real=f.num_real,
                        classifier_scales=options.classifier_scales)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  runtime.set_up_process()
  with runtime.one_line_errors(PROGRAM):
    rows = evaluation.evaluate(
        options.workdir, ws=options.ws, num_samples=f.num_samples,
        spec_overrides=options.spec_overrides, out=options.out, step=options.step,
        classifier_workdir=options.classifier_workdir,
        classifier_scales=options.classifier_scales, guide_workdir=options.guide_workdir,
        guide_step=options.guide_step, inception_weights=f.inception_weights,
        eval_classifier_config=f.eval_classifier_config,
        eval_classifier_dir=f.eval_classifier_dir, num_real=f.num_real, k=f.k,
        is_splits=f.is_splits, batch_size=options.batch_size,
        feature_batch_size=f.feature_batch_size, seed=options.seed, emas=options.emas)
  if jax.process_index() == 0:
    print((options.out / "metrics.md").read_text())
    print(f"Wrote {len(rows)} rows to {options.out}: metrics.csv, metrics.md, fid_vs_is.png")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
