r"""Samples a trained run at several guidance strengths w: PNG grids and .npz files.

    python -m cfg_jax.sample --workdir=runs/mnist --w=0,0.5,1,3 --num_samples=100 \
        --steps=256 --out=runs/mnist/samples_cli

Restores the EMA parameters of `--workdir`'s newest checkpoint that restores, or of
`--step` (and those of `--classifier_workdir`, for classifier guidance), samples on every
device with the batch sharded over them, and writes per w: `w<w>.png` (one row per
class) and `w<w>.npz` (uint8 `images`, int `labels`; for 2-D data float `points` instead
of images). w is the paper's weight: ε̃ = (1 + w) ε(z, c) − w ε(z, ∅); the "guidance
scale" of other code bases is 1 + w. Checkpoints are only read, so a run can be sampled
while it trains.
"""
from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from etils import epath
import jax
import numpy as np

from cfg_jax import runs
from cfg_jax import runtime
from cfg_jax import sampling


FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The flags, defined only when this module is the program (see cfg_jax.evaluate)."""
  flags.DEFINE_string("workdir", None, "A training run (python -m cfg_jax.train --workdir).")
  flags.DEFINE_integer("step", None, "The checkpoint (training step) to sample; default: the "
                       "newest that restores. Not --steps, the sampling steps.")
  flags.DEFINE_list("w", ["0", "0.5", "1", "3"], "Guidance weights w (paper's; scale = 1 + w).")
  flags.DEFINE_integer("num_samples", None, "Samples per w, spread evenly over the classes.")
  flags.DEFINE_integer("per_class", None, "Samples of each class per w (instead of num_samples).")
  flags.DEFINE_list("labels", None, "Explicit class labels to sample (instead of num_samples).")
  flags.DEFINE_integer("steps", 256, "Sampling steps T.")
  flags.DEFINE_string("out", None, "Output folder (default <workdir>/samples_cli).")
  # Not --v, which is absl's logging verbosity.
  flags.DEFINE_float("sampling_v", None,
                     "Reverse-variance interpolation v in [0, 1] (default: the run's).")
  flags.DEFINE_enum("sampler", None, list(sampling.SAMPLERS),
                    "stochastic or ddim (default: the run's).")
  flags.DEFINE_bool("clip_x", None, "Clip x̃ to [-1, 1] (default: the run's).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_list("guidance_interval", None, "lo,hi: guide only for λ in [lo, hi].")
  flags.DEFINE_integer("batch_size", 256, "Samples per device call (global, over all devices).")
  flags.DEFINE_string("classifier_workdir", None, "A classifier run, for classifier guidance.")
  flags.DEFINE_list("classifier_scale", None,
                    "Classifier guidance scales s (with --classifier_workdir).")
  flags.DEFINE_bool("unconditional", False, "Run the diffusion model on ∅ only; the labels "
                    "steer the classifier (classifier guidance of an unconditional model).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  ws = runtime.parse_floats("w", FLAGS.w)
  interval = None
  if FLAGS.guidance_interval is not None:
    interval = tuple(runtime.parse_floats("guidance_interval", FLAGS.guidance_interval))
    if len(interval) != 2:
      raise app.UsageError("--guidance_interval must be lo,hi.")
  scales = [None]
  if (FLAGS.classifier_workdir is None) != (FLAGS.classifier_scale is None):
    raise app.UsageError("--classifier_workdir and --classifier_scale go together.")
  if FLAGS.classifier_scale is not None:
    scales = runtime.parse_floats("classifier_scale", FLAGS.classifier_scale)
  if FLAGS.unconditional:
    if FLAGS.classifier_workdir is None or FLAGS["w"].present:
      raise app.UsageError("--unconditional samples the model on ∅ guided by a classifier "
                           "only: give --classifier_workdir and --classifier_scale, not --w.")
    ws = [None]
  if FLAGS.batch_size < 1:
    raise app.UsageError(f"--batch_size must be >= 1, got {FLAGS.batch_size}.")
  runtime.set_up_process()
  with runtime.one_line_errors("cfg_jax.sample"):
    _sample(ws, scales, interval)


def _sample(ws, scales, interval):
  """Restores the runs and writes the samples of every (w, classifier scale)."""
  run = runs.load_run(FLAGS.workdir, step=FLAGS.step)
  num_classes = run.config.data.num_classes
  labels = runs.make_labels(
      num_classes, num_samples=FLAGS.num_samples, per_class=FLAGS.per_class,
      labels=None if FLAGS.labels is None else [int(x) for x in FLAGS.labels])
  classifier = None
  if FLAGS.classifier_workdir is not None:
    classifier = runs.load_run(FLAGS.classifier_workdir)
  sample_fn = runs.make_run_sample_fn(
      run, num_steps=FLAGS.steps, v=FLAGS.sampling_v, sampler=FLAGS.sampler,
      clip_x=FLAGS.clip_x, guidance_interval=interval, classifier=classifier,
      condition_model=not FLAGS.unconditional)
  out = epath.Path(FLAGS.out or epath.Path(FLAGS.workdir) / "samples_cli")
  for scale in scales:
    for w in ws:
      x = runs.sample_in_batches(
          sample_fn, run.params, labels, w=w, batch_size=FLAGS.batch_size, seed=FLAGS.seed,
          classifier_params=None if classifier is None else classifier.params,
          classifier_scale=scale, progress=jax.process_index() == 0)
      name = "uncond" if w is None else f"w{w:g}"
      name += "" if scale is None else f"_s{scale:g}"
      if jax.process_index() == 0:
        runs.write_samples(x, labels, out, name, num_classes=num_classes,
                           title=f"{epath.Path(FLAGS.workdir).name} step {run.step}, {name}")
  print(f"Wrote {len(ws) * len(scales)} grids and npz files to {out}")


if __name__ == "__main__":
  _define_flags()
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
