"""What the generate and evaluate command lines share: the flags that choose a run, its
sampling spec, its guidance, and their parsing.

The sampler is the run's config.sampling, overridden field by field in the config's own
syntax, `--sampling.<field>=<value>` (e.g. `--sampling.num_steps=50
--sampling.guidance=apg --sampling.guidance_params.eta=0`), and validated by config_lib's
rules like the training config.

Each CLI defines its flags only when it is the program (`define_sampling_flags` under
`if __name__ == "__main__"`), so importing the CLIs together defines nothing twice.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

from absl import app
from absl import flags
from etils import epath
from ml_collections import config_flags

from cfg_jax import config_lib
from cfg_jax import ema_snapshots
from cfg_jax import runtime

FLAGS = flags.FLAGS
# The flags defined here belong to the CLI that calls define_sampling_flags: its --help
# lists them.
flags.disclaim_key_flags()
SPEC_FLAG = "sampling"
SPEC_FIELDS = tuple(name.split(".", 1)[1] for name in config_lib.RULES
                    if name.startswith("sampling."))


def define_sampling_flags(program: str, *, default_w: Sequence[str], out_default: str,
                          verb: str) -> None:
  """--workdir, --step, --w, --out, --seed, --batch_size, --sampling.<field> (the run's
  sampling spec), and the classifier-guidance and autoguidance flags. `verb` says what
  the CLI does with the checkpoint. Refuses an override of a field config.sampling lacks
  with one line naming it, as `program` (before ml_collections reads the overrides, which
  it does when the flag is defined)."""
  runtime.refuse_unknown_overrides(program, SPEC_FLAG, SPEC_FIELDS,
                                   schema="cfg_jax.config_lib.base_config().sampling")
  flags.DEFINE_string("workdir", None, "A training run (python -m cfg_jax.train --workdir).")
  flags.DEFINE_integer("step", None, f"The checkpoint (training step) to {verb}; default: the "
                       "newest that restores. Not --sampling.num_steps, the sampling steps.")
  flags.DEFINE_list("w", list(default_w), "Guidance weights w (paper's; scale = 1 + w).")
  config_flags.DEFINE_config_dict(
      SPEC_FLAG, config_lib.base_config().sampling,
      "The run's config.sampling, overridden field by field: --sampling.num_steps=50, "
      "--sampling.sampler=ddim, --sampling.guidance=apg, --sampling.guidance_params.eta=0, "
      "--sampling.guidance_interval='(-1,3)'. Unset fields keep the run's values.")
  flags.DEFINE_string("out", None, f"Output folder (default <workdir>/{out_default}).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("batch_size", 256, "Samples per device call (global, over all devices).")
  flags.DEFINE_string("classifier_workdir", None, "A classifier run, for classifier guidance.")
  flags.DEFINE_list("classifier_scale", None,
                    "Classifier guidance scales s (with --classifier_workdir).")
  flags.DEFINE_string("guide_workdir", None,
                      "Autoguidance: a weaker conditional run of the same data (a smaller "
                      "model, or the run itself at an earlier --guide_step) whose output "
                      "replaces the unconditional one in every guided step.")
  flags.DEFINE_list("ema", None, "Power EMAs reconstructed by python -m cfg_jax.posthoc_ema, "
                    "by name (sigma_rel_0.07), instead of the checkpoint's EMA; with --step, "
                    "the step they were reconstructed at.")
  flags.DEFINE_integer("guide_step", None, "The guide's checkpoint (default: its newest); "
                       "alone, an earlier checkpoint of --workdir guides.")
  flags.mark_flags_as_required(["workdir"])


def parse_floats(name: str, values: Sequence[str] | None) -> list[float] | None:
  """A list flag's strings as finite floats, or a UsageError naming --<name>."""
  if values is None:
    return None
  try:
    out = [float(x) for x in values]
  except ValueError as e:
    raise app.UsageError(f"--{name} must be a comma-separated list of numbers: {e}") from e
  if not all(math.isfinite(x) for x in out):
    raise app.UsageError(f"--{name} must be finite, got {','.join(values)}.")
  return out


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  """The parsed flags of `define_sampling_flags`. `spec_overrides` are the
  --sampling.<field> values given, by field name under config.sampling (`runs.sampling_spec`
  applies them to the run's)."""
  workdir: str
  step: int | None
  ws: list[float]
  spec_overrides: dict[str, Any]
  out: epath.Path
  seed: int
  batch_size: int
  classifier_workdir: str | None
  classifier_scales: list[float] | None
  guide_workdir: str | None
  guide_step: int | None
  emas: list[str] | None  # --ema: names of reconstructed EMAs; None: the checkpoint's


def sampling_options(out_default: str) -> SamplingOptions:
  """The flags of `define_sampling_flags`, checked; a UsageError names a bad one."""
  if FLAGS.batch_size < 1:
    raise app.UsageError(f"--batch_size must be >= 1, got {FLAGS.batch_size}.")
  for name in FLAGS.ema or ():
    try:
      ema_snapshots.parse_ema_name(name)
    except ValueError as e:
      raise app.UsageError(str(e)) from e
  if FLAGS.ema is not None and not FLAGS.ema:
    raise app.UsageError("--ema must name at least one EMA, e.g. --ema=sigma_rel_0.07.")
  guide_workdir = FLAGS.guide_workdir
  if guide_workdir is None and FLAGS.guide_step is not None:
    guide_workdir = FLAGS.workdir
  return SamplingOptions(
      workdir=FLAGS.workdir, step=FLAGS.step, ws=parse_floats("w", FLAGS.w),
      spec_overrides=dict(config_flags.get_override_values(FLAGS[SPEC_FLAG])),
      out=epath.Path(FLAGS.out or epath.Path(FLAGS.workdir) / out_default), seed=FLAGS.seed,
      batch_size=FLAGS.batch_size, classifier_workdir=FLAGS.classifier_workdir,
      classifier_scales=parse_floats("classifier_scale", FLAGS.classifier_scale),
      guide_workdir=guide_workdir, guide_step=FLAGS.guide_step, emas=FLAGS.ema)
