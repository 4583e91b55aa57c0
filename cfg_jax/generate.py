r"""Samples of a trained run at several guidance strengths w: PNG grids and .npz files.

    python -m cfg_jax.generate --workdir=runs/mnist --w=0,0.5,1,3 --num_samples=100 \
        --sampling.num_steps=256 --out=runs/mnist/samples_cli

Restores the EMA parameters of `--workdir`'s newest checkpoint that restores, or of
`--step` (and those of `--classifier_workdir`, for classifier guidance), samples on every
device with the batch sharded over them, and writes per w: `w<w>.png` (one row per
class) and `w<w>.npz` (uint8 `images`, int `labels`; for 2-D data float `points` instead
of images). w is the paper's weight: ε̃ = (1 + w) ε(z, c) − w ε(z, ∅); the "guidance
scale" of other code bases is 1 + w. The sampler is the run's config.sampling, any field
overridden as `--sampling.<field>=...` (the rule: `--sampling.guidance=apg
--sampling.guidance_params.eta=0`); `--guide_workdir`/`--guide_step` guide with a weaker
network instead of ∅ (autoguidance). Checkpoints are only read, so a run can be sampled
while it trains. `--ema=sigma_rel_<σ_rel>` samples a power EMA reconstructed by
`python -m cfg_jax.posthoc_ema` instead of the checkpoint's EMA.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

from absl import app
from absl import flags
from etils import epath
import jax

from cfg_jax import cli
from cfg_jax import runs
from cfg_jax import runtime


PROGRAM = "cfg_jax.generate"
OUT_DEFAULT = "samples_cli"  # under the workdir


def generate(workdir: epath.PathLike, *, ws: Sequence[float | None], out: epath.PathLike,
             spec_overrides: Mapping[str, Any] | None = None, num_samples: int | None = None,
             per_class: int | None = None, labels: Sequence[int] | None = None,
             step: int | None = None, seed: int = 0, batch_size: int = 256,
             classifier_workdir: epath.PathLike | None = None,
             classifier_scales: Sequence[float] | None = None,
             guide_workdir: epath.PathLike | None = None, guide_step: int | None = None,
             unconditional: bool = False, ema: str | None = None) -> list[str]:
  """Writes `<name>.png` and `<name>.npz` to `out` for every (classifier scale, w).

  Arguments are the flags of the same names (see `_define_flags`); `spec_overrides` are
  the --sampling.<field> values, applied to the run's config.sampling. w None samples
  without classifier-free guidance. Returns the names.
  """
  run = runs.load_run(workdir, step=step, ema=ema)
  spec = runs.sampling_spec(run.config, spec_overrides)
  num_classes = run.config.data.num_classes
  labels = runs.make_labels(num_classes, num_samples=num_samples, per_class=per_class,
                            labels=labels)
  classifier = runs.load_classifier(classifier_workdir, classifier_scales,
                                    run_config=run.config)
  guide = (None if guide_workdir is None else
           runs.load_guide(guide_workdir, step=guide_step, run=run))
  sample_fn = runs.make_run_sample_fn(run, spec, classifier=classifier, guide=guide,
                                      condition_model=not unconditional)
  names = []
  for scale, w, x in runs.sample_guidance_grid(
      sample_fn, run, labels, ws=ws, classifier=classifier, classifier_scales=classifier_scales,
      guide=guide, batch_size=batch_size, seed=seed):
    name = ("uncond" if w is None else f"w{w:g}") + ("" if scale is None else f"_s{scale:g}")
    if jax.process_index() == 0:
      runs.write_sample_files(x, labels, epath.Path(out), name, num_classes=num_classes,
                              title=f"{epath.Path(workdir).name} step {run.step}, {name}")
    names.append(name)
  return names


def _define_flags() -> None:
  cli.define_sampling_flags(PROGRAM, default_w=["0", "0.5", "1", "3"],
                            out_default=OUT_DEFAULT, verb="sample")
  flags.DEFINE_integer("num_samples", None, "Samples per w, spread evenly over the classes.")
  flags.DEFINE_integer("per_class", None, "Samples of each class per w (instead of num_samples).")
  flags.DEFINE_list("labels", None, "Explicit class labels to sample (instead of num_samples).")
  flags.DEFINE_bool("unconditional", False, "Run the diffusion model on ∅ only; the labels "
                    "steer the classifier (classifier guidance of an unconditional model).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  options = cli.sampling_options(OUT_DEFAULT)
  ws = options.ws
  if f.unconditional:
    if options.classifier_workdir is None or f["w"].present:
      raise app.UsageError("--unconditional samples the model on ∅ guided by a classifier "
                           "only: give --classifier_workdir and --classifier_scale, not --w.")
    ws = [None]
  if options.emas is not None and len(options.emas) > 1:
    raise app.UsageError(f"--ema: generate samples one EMA, got {','.join(options.emas)}; "
                         f"python -m cfg_jax.evaluate compares several.")
  runtime.set_up_process()
  with runtime.one_line_errors(PROGRAM):
    names = generate(
        options.workdir, ws=ws, out=options.out, spec_overrides=options.spec_overrides,
        num_samples=f.num_samples, per_class=f.per_class,
        labels=None if f.labels is None else [int(x) for x in f.labels], step=options.step,
        seed=options.seed, batch_size=options.batch_size,
        classifier_workdir=options.classifier_workdir,
        classifier_scales=options.classifier_scales, guide_workdir=options.guide_workdir,
        guide_step=options.guide_step, unconditional=f.unconditional,
        ema=None if options.emas is None else options.emas[0])
  print(f"Wrote {len(names)} grids and npz files to {options.out}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
