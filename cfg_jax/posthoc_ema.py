r"""Post-hoc EMA: the power EMA of any width σ_rel, reconstructed from a run's snapshots.

    python -m cfg_jax.posthoc_ema --workdir=runs/mnist --sigma_rel=0.05,0.07,0.1 [--step=N]
    python -m cfg_jax.generate --workdir=runs/mnist --ema=sigma_rel_0.07 ...

A run trained with `--config.training.ema=power` keeps snapshots of the EMAs of its widths
training.ema_sigma_rels (cfg_jax.ema_snapshots). The EMA of width σ_rel at the step of a
snapshot (default: the newest) is the least-squares combination of the snapshots up to
that step whose profile is nearest to σ_rel's (Karras et al. 2024, section 3.2; cfg_jax.ema).
Each is written to <workdir>/posthoc_ema/sigma_rel_<σ_rel>/<step>/ with the coefficients
in its metadata; generate and evaluate read it with `--ema=sigma_rel_<σ_rel>`. The run's
checkpoints and snapshots are only read, and an EMA already reconstructed is kept.
"""
from __future__ import annotations

from typing import Sequence

from absl import app
from absl import flags
from absl import logging
from etils import epath

from cfg_jax import checkpointing
from cfg_jax import cli
from cfg_jax import config_files
from cfg_jax import config_lib
from cfg_jax import ema
from cfg_jax import ema_snapshots
from cfg_jax import extras
from cfg_jax import runtime

PROGRAM = "cfg_jax.posthoc_ema"


def check_sigma_rels(sigma_rels: Sequence[float]) -> None:
  """ValueError naming --sigma_rel unless it is a non-empty list of widths in the range."""
  if not sigma_rels or not all(0. < s < ema.MAX_SIGMA_REL for s in sigma_rels):
    raise ValueError(f"--sigma_rel must be a non-empty list of widths in (0, "
                     f"{ema.MAX_SIGMA_REL:.4f}), got {list(sigma_rels)}.")


def reconstruct(workdir: epath.PathLike, sigma_rels: Sequence[float], *,
                step: int | None = None) -> dict[float, epath.Path]:
  """Writes the EMA of each width σ_rel at snapshot `step` (default: the newest); returns
  {σ_rel: its folder}. An EMA already in its folder at that step is left as it is."""
  check_sigma_rels(sigma_rels)
  extras.check_path(workdir, flag="--workdir")
  workdir = epath.Path(workdir)
  config = config_files.load_config(workdir)
  config_lib.validate(config)
  steps = ema_snapshots.snapshot_steps(workdir)
  if not steps:
    kind = config.training.ema
    raise FileNotFoundError(
        f"--workdir={workdir} has no EMA snapshots: " +
        ("it was trained with config.training.ema='constant'; train with "
         "--config.training.ema=power to keep them." if kind == "constant" else
         f"none was written yet (every config.training.ema_snapshot_every="
         f"{config.training.ema_snapshot_every} steps)."))
  if step is None:
    step = steps[-1]
  elif step not in steps:
    raise ValueError(f"--step={step}: {workdir / ema_snapshots.SNAPSHOTS} has no snapshot of "
                     f"that step; it has steps {', '.join(map(str, steps))}.")
  folders = {s: workdir / ema_snapshots.posthoc_subdir(s) for s in sigma_rels}
  todo = [s for s in sigma_rels
          if step not in ema_snapshots.steps_in(workdir, ema_snapshots.posthoc_subdir(s))]
  for s in set(sigma_rels) - set(todo):
    logging.info("%s already holds step %d; kept.", folders[s], step)
  if not todo:
    return folders

  inputs = [s for s in steps if s <= step]
  widths = ema_snapshots.snapshot_widths(workdir, inputs)
  in_steps = [t for t, ws in zip(inputs, widths) for _ in ws]
  in_sigma_rels = [w for ws in widths for w in ws]
  weights = ema.posthoc_coefficients(in_steps, in_sigma_rels, step, todo)
  emas = ema.combine(ema_snapshots.read_snapshots(workdir, config, inputs), weights)
  for j, sigma_rel in enumerate(todo):
    meta = {"signature": checkpointing.signature(config), "sigma_rel": sigma_rel,
            "inputs": [{"step": t, "sigma_rel": w, "weight": float(weights[i, j])}
                       for i, (t, w) in enumerate(zip(in_steps, in_sigma_rels))]}
    checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=None,
                                              subdir=ema_snapshots.posthoc_subdir(sigma_rel))
    try:
      checkpointer.save(step, {"ema_params": emas[j]}, meta)
      checkpointer.wait()
    finally:
      checkpointer.close()
    logging.info("Wrote the EMA of sigma_rel %g at step %d from %d snapshots to %s.",
                 sigma_rel, step, len(in_steps), folders[sigma_rel])
  return folders


def _define_flags() -> None:
  flags.DEFINE_string("workdir", None, "A run trained with --config.training.ema=power.")
  flags.DEFINE_list("sigma_rel", None, "Widths σ_rel of the EMAs to reconstruct, e.g. 0.05,0.1 "
                    f"(each in (0, {ema.MAX_SIGMA_REL:.4f})).")
  flags.DEFINE_integer("step", None, "The snapshot step to reconstruct at (default: the newest).")
  flags.mark_flags_as_required(["workdir", "sigma_rel"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  sigma_rels = cli.parse_floats("sigma_rel", f.sigma_rel)
  try:
    check_sigma_rels(sigma_rels)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  runtime.set_up_process()
  with runtime.one_line_errors(PROGRAM):
    folders = reconstruct(f.workdir, sigma_rels, step=f.step)
  for sigma_rel, folder in folders.items():
    print(f"--ema={ema_snapshots.ema_name(sigma_rel)}: {folder}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
