"""What the generate and evaluate command lines share: the flags that choose a run, its
sampler and its guidance, and their parsing.

Each CLI defines its flags only when it is the program (`define_sampling_flags` under
`if __name__ == "__main__"`), so importing the CLIs together defines nothing twice.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

from absl import app
from absl import flags
from etils import epath

from cfg_jax import sampling

FLAGS = flags.FLAGS
# The flags defined here belong to the CLI that calls define_sampling_flags: its --help
# lists them.
flags.disclaim_key_flags()


def define_sampling_flags(*, default_w: Sequence[str], out_default: str, verb: str) -> None:
  """--workdir, --step, --w, --steps, --out, --seed, --batch_size, the sampler options and
  the classifier-guidance flags. `verb` says what the CLI does with the checkpoint."""
  flags.DEFINE_string("workdir", None, "A training run (python -m cfg_jax.train --workdir).")
  flags.DEFINE_integer("step", None, f"The checkpoint (training step) to {verb}; default: the "
                       "newest that restores. Not --steps, the sampling steps.")
  flags.DEFINE_list("w", list(default_w), "Guidance weights w (paper's; scale = 1 + w).")
  flags.DEFINE_integer("steps", None, "Sampling steps T (default: the run's "
                       "config.sampling.num_steps; a distilled student's: its own).")
  flags.DEFINE_string("out", None, f"Output folder (default <workdir>/{out_default}).")
  flags.DEFINE_integer("seed", 0, "Sampling seed.")
  flags.DEFINE_integer("batch_size", 256, "Samples per device call (global, over all devices).")
  # Not --v, which is absl's logging verbosity.
  flags.DEFINE_float("sampling_v", None,
                     "Reverse-variance interpolation v in [0, 1] (default: the run's).")
  flags.DEFINE_enum("sampler", None, list(sampling.SAMPLERS),
                    "stochastic or ddim (default: the run's).")
  flags.DEFINE_bool("clip_x", None, "Clip x̃ to [-1, 1] (default: the run's).")
  flags.DEFINE_list("guidance_interval", None,
                    "lo,hi: guide only for λ in [lo, hi]; an empty value guides every step "
                    "(default: the run's config.sampling.guidance_interval).")
  flags.DEFINE_string("classifier_workdir", None, "A classifier run, for classifier guidance.")
  flags.DEFINE_list("classifier_scale", None,
                    "Classifier guidance scales s (with --classifier_workdir).")
  flags.mark_flags_as_required(["workdir"])


def parse_guidance_interval(values: Sequence[str] | None) -> tuple[float, ...] | None:
  """--guidance_interval's strings as (lo, hi), () (guide every step) or None (not given);
  a UsageError otherwise."""
  interval = parse_floats("guidance_interval", values)
  if interval is not None and not (interval == [] or (len(interval) == 2
                                                      and interval[0] <= interval[1])):
    raise app.UsageError(f"--guidance_interval must be lo,hi with lo <= hi, or empty to guide "
                         f"every step, got {','.join(values)}.")
  return None if interval is None else tuple(interval)


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
  """The parsed flags of `define_sampling_flags`; None options mean the run's config."""
  workdir: str
  step: int | None
  ws: list[float]
  steps: int | None
  out: epath.Path
  seed: int
  batch_size: int
  v: float | None
  sampler: str | None
  clip_x: bool | None
  guidance_interval: tuple[float, ...] | None  # () guides every step
  classifier_workdir: str | None
  classifier_scales: list[float] | None


def sampling_options(out_default: str) -> SamplingOptions:
  """The flags of `define_sampling_flags`, checked; a UsageError names a bad one."""
  for name in ("steps", "batch_size"):
    if FLAGS[name].value is not None and FLAGS[name].value < 1:
      raise app.UsageError(f"--{name} must be >= 1, got {FLAGS[name].value}.")
  return SamplingOptions(
      workdir=FLAGS.workdir, step=FLAGS.step, ws=parse_floats("w", FLAGS.w), steps=FLAGS.steps,
      out=epath.Path(FLAGS.out or epath.Path(FLAGS.workdir) / out_default), seed=FLAGS.seed,
      batch_size=FLAGS.batch_size, v=FLAGS.sampling_v, sampler=FLAGS.sampler,
      clip_x=FLAGS.clip_x, guidance_interval=parse_guidance_interval(FLAGS.guidance_interval),
      classifier_workdir=FLAGS.classifier_workdir,
      classifier_scales=parse_floats("classifier_scale", FLAGS.classifier_scale))
