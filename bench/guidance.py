r"""Guidance rules compared on one trained model: each rule's FID against its accuracy.

    python -m bench.guidance --workdir=runs/mnist --guide_workdir=runs/mnist_small
    python -m bench.guidance --quick --workdir=...       # a few points: checks that it runs

It samples one trained run with every variant of VARIANTS: the rules of cfg_jax.guidance
(the paper's CFG, CFG guided only for λ in an interval, CFG with w scheduled over the
steps, guidance rescale, APG, CFG-Zero*, CFG++ with the deterministic sampler) and
autoguidance, whose second pass is a weaker network on the labels instead of the run on
∅: the run itself at --guide_fraction of its training steps, and a smaller model
(--guide_workdir, if given). Each variant runs over a sweep of its strength w, at the same
number of network evaluations per sample (two a step, except the interval's unguided
steps: the NFE column), 1,000 samples a point, measured by the project's evaluator:
accuracy on the intended labels, FID, IS, precision and recall (eval-classifier
features), beside the same number of real digits.

Out, under --out (default <workdir>/bench_guidance): points/<sampler>/<variant>/w<w>.json,
one per measured point (a rerun measures only the points missing, so an interrupted run
resumes; `--ws` measures only some w of each sweep, `--report_only` none and reports the
points on disk), results.json, report.md (every point, then per variant its best FID at
accuracy >= 0.99 and its best FID overall, and the target), frontier_<sampler>.png (FID
against accuracy, one curve per variant).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import pathlib
from typing import Any, Sequence

import numpy as np

from bench import common
from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import files
from cfg_jax import guidance
from cfg_jax import runs
from cfg_jax import sampling
from cfg_jax import schedules
from cfg_jax import visualization
from cfg_jax.evaluation import evaluator as cfg_evaluator
from cfg_jax.evaluation import report as eval_report

ACCURACY_BOUND = 0.99  # "accurate enough": the best FID above it is each variant's figure
FID_BOUND = 1.5  # target: some variant at accuracy >= 0.99 within 1.5x of CFG's best FID


@dataclasses.dataclass(frozen=True)
class Variant:
  """A way to guide: sampling-spec overrides, the w swept, the guide (None: ∅; "early": the
  run at --guide_fraction of its steps; "small": --guide_workdir) and the samplers."""
  name: str
  what: str
  overrides: dict[str, Any]
  ws: tuple[float, ...]
  guide: str | None = None
  samplers: tuple[str, ...] = sampling.SAMPLERS


VARIANTS = (
    Variant("cfg", "CFG (Ho & Salimans)", {}, (0., 0.1, 0.2, 0.5)),
    Variant("cfg_interval", "CFG for λ in [-1, 3]", {"guidance_interval": (-1., 3.)},
            (1., 3.)),
    Variant("cfg_linear", "CFG, w linear over the steps", {"w_schedule": "linear"},
            (0.5, 1.)),
    Variant("cfg_cosine", "CFG, w cosine over the steps", {"w_schedule": "cosine"},
            (0.5, 1.)),
    Variant("rescale", "guidance rescale, φ = 0.7",
            {"guidance": "rescale", "guidance_params.phi": 0.7}, (0.5, 1.)),
    Variant("apg", "APG, η = 0, β = -0.5",
            {"guidance": "apg", "guidance_params.eta": 0., "guidance_params.momentum": -0.5},
            (1., 2.)),
    Variant("cfg_zero_star", "CFG-Zero*, 1 step zeroed",
            {"guidance": "cfg_zero_star", "guidance_params.zero_init_steps": 1},
            (0.1, 0.3)),
    Variant("cfgpp", "CFG++ (λ = 1 + w)", {"guidance": "cfgpp"}, (-0.3, 0.3),
            samplers=("ddim",)),
    Variant("auto_early", "autoguidance by the run early in its training", {},
            (1., 3.), guide="early"),
    Variant("auto_small", "autoguidance by a smaller model", {}, (1., 3.),
            guide="small"),
)


def _samplers_of(rule: str) -> tuple[str, ...]:
  """The samplers a rule of the catalogue is defined for."""
  out = []
  for sampler in sampling.SAMPLERS:
    try:
      guidance.RULES[rule]().check_sampler(sampler)
      out.append(sampler)
    except ValueError:
      pass
  return tuple(out)


# A rule of the catalogue without a variant above runs at its defaults.
VARIANTS += tuple(Variant(name, name, {"guidance": name}, (1., 2., 4.),
                          samplers=_samplers_of(name))
                  for name in guidance.RULES if name not in {v.name for v in VARIANTS})
QUICK_WS = 2  # --quick: the first ws of each variant


@dataclasses.dataclass
class Options:
  workdir: pathlib.Path
  step: int | None
  out: pathlib.Path
  samplers: list[str]
  variants: list[str]
  samples: int
  steps: int
  batch_size: int
  seed: int
  guide_fraction: float
  guide_workdir: pathlib.Path | None
  quick: bool
  ws: tuple[float, ...] | None = None  # only these w of each sweep (None: all)
  report_only: bool = False  # measure nothing: report the points on disk


def point_path(o: Options, sampler: str, variant: Variant, w: float) -> pathlib.Path:
  return o.out / "points" / sampler / variant.name / f"w{w:g}.json"


def early_step(workdir: pathlib.Path, step: int, fraction: float) -> int:
  """The newest checkpoint of the run at or before fraction · step."""
  checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
  try:
    steps = [s for s in checkpointer.steps() if s <= fraction * step]
  finally:
    checkpointer.close()
  if not steps:
    raise ValueError(f"--guide_fraction={fraction:g}: --workdir={workdir} has no checkpoint at "
                     f"or before step {fraction * step:g}.")
  return steps[-1]


def nfe(spec: Any, logsnrs: np.ndarray) -> int:
  """Network evaluations per sample: two at each guided step, one elsewhere."""
  interval = spec.guidance_interval
  guided = (np.ones(len(logsnrs), bool) if not interval else
            (logsnrs >= interval[0]) & (logsnrs <= interval[1]))
  return int(len(logsnrs) + guided.sum())


def measure(o: Options) -> dict[str, Any]:
  """Samples and measures every point not yet on disk; returns results.json's dict."""
  run = runs.load_run(o.workdir, step=o.step)
  guides = {"early": runs.load_guide(o.workdir, run=run, step=early_step(
      o.workdir, run.step, o.guide_fraction))}
  if o.guide_workdir is not None:
    guides["small"] = runs.load_guide(o.guide_workdir, step=None, run=run)
  evaluator = cfg_evaluator.Evaluator(
      run.config, cache_dir=o.out / "eval", num_samples=o.samples, batch_size=o.batch_size,
      eval_classifier_config=common.eval_classifier_config(o.quick))
  rows = []
  for sampler in o.samplers:
    for variant in (v for v in VARIANTS if v.name in o.variants and sampler in v.samplers):
      if variant.guide is not None and variant.guide not in guides:
        common.progress(f"{variant.name}: skipped, no --guide_workdir")
        continue
      guide = guides.get(variant.guide)
      spec = runs.sampling_spec(run.config, {"num_steps": o.steps, "sampler": sampler,
                                             "guidance_interval": (), **variant.overrides})
      ws = [w for w in (variant.ws[:QUICK_WS] if o.quick else variant.ws)
            if o.ws is None or w in o.ws]
      if o.report_only:
        ws = [w for w in ws if point_path(o, sampler, variant, w).exists()]
      todo = [w for w in ws if not point_path(o, sampler, variant, w).exists()]
      if todo:
        common.progress(f"{sampler}, {variant.name}: sampling w = {todo}")
        sample_fn = runs.make_run_sample_fn(run, spec, guide=guide)
        logsnrs = np.asarray(schedules.sampling_logsnrs(
            o.steps, logsnr_min=run.config.diffusion.logsnr_min,
            logsnr_max=run.config.diffusion.logsnr_max))
        # Each point is written as soon as it is measured: an interrupted run loses one.
        for _, w, x in runs.sample_guidance_grid(
            sample_fn, run, evaluator.labels, ws=todo, guide=guide,
            batch_size=min(o.batch_size, o.samples), seed=o.seed):
          point = {"sampler": sampler, "variant": variant.name, "w": w,
                   "nfe": nfe(spec, logsnrs),
                   "guide_step": None if guide is None else guide.step,
                   **evaluator.metrics(x)}
          path = point_path(o, sampler, variant, w)
          path.parent.mkdir(parents=True, exist_ok=True)
          files.write_text_atomic(path, json.dumps(point, indent=1))
      rows += [json.loads(point_path(o, sampler, variant, w).read_text()) for w in ws]
  floor_path = o.out / "floor.json"
  if not floor_path.exists():
    files.write_text_atomic(floor_path, json.dumps(evaluator.floor(), indent=1))
  return {"machine": common.machine(), "workdir": str(o.workdir), "step": run.step,
          "guide_steps": {k: g.step for k, g in guides.items()},
          "guide_workdir": None if o.guide_workdir is None else str(o.guide_workdir),
          "samples_per_point": o.samples, "steps": o.steps, "seed": o.seed, "rows": rows,
          "floor": json.loads(floor_path.read_text())}


def summary(rows: list[dict[str, Any]], sampler: str) -> list[dict[str, Any]]:
  """Per variant: its best FID at accuracy >= ACCURACY_BOUND and its best FID overall, and
  each as a multiple of CFG's best FID at any w."""
  mine = [r for r in rows if r["sampler"] == sampler]
  cfg = [r["fid"] for r in mine if r["variant"] == "cfg"]
  best_cfg = min(cfg) if cfg else math.nan
  out = []
  for variant in VARIANTS:
    points = [r for r in mine if r["variant"] == variant.name]
    if not points:
      continue
    best = min(points, key=lambda r: r["fid"])
    accurate = [r for r in points if r["accuracy"] >= ACCURACY_BOUND]
    best_accurate = min(accurate, key=lambda r: r["fid"]) if accurate else None
    out.append({"variant": variant.name, "what": variant.what, "best": best,
                "best_accurate": best_accurate,
                "best_over_cfg": best["fid"] / best_cfg,
                "accurate_over_cfg": (best_accurate["fid"] / best_cfg if best_accurate
                                      else math.nan)})
  return out


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """Per sampler: the smallest FID at accuracy >= 0.99 over CFG's best FID (any variant)."""
  figures = {}
  for sampler in sorted({r["sampler"] for r in results["rows"]}):
    ratios = [s["accurate_over_cfg"] for s in summary(results["rows"], sampler)]
    ratios = [r for r in ratios if not math.isnan(r)]
    figures[f"{sampler}: best FID at accuracy >= {ACCURACY_BOUND} / CFG's best FID"] = (
        min(ratios) if ratios else math.inf)
  return common.judge(figures, {name: ("<=", FID_BOUND) for name in figures})


def _cells(r: dict[str, Any]) -> str:
  return (f"{r['accuracy']:.3f} | {r['fid']:.1f} | {r['inception_score']:.2f} | "
          f"{r['precision']:.3f} | {r['recall']:.3f}")


def report(results: dict[str, Any]) -> str:
  """The markdown of results.json."""
  m = results["machine"]
  guides = ", ".join(f"{k}: step {s}" for k, s in results["guide_steps"].items())
  if results["guide_workdir"] is not None:
    guides += f" (small: {results['guide_workdir']})"
  lines = [f"Run {results['workdir']} at step {results['step']}; guides {guides}; "
           f"{results['samples_per_point']} samples a point, {results['steps']} steps, "
           f"seed {results['seed']}; {m['cpu']}, {m['cores']} cores, jax {m['jax']} "
           f"({m['device_kind']}), {m['date']}.", ""]
  what = {v.name: v.what for v in VARIANTS}
  for sampler in sorted({r["sampler"] for r in results["rows"]}, reverse=True):
    lines += [f"### {sampler}", "",
              "| variant | w | NFE | accuracy | FID | IS | precision | recall |",
              "|---|---|---|---|---|---|---|---|"]
    for r in (r for r in results["rows"] if r["sampler"] == sampler):
      lines.append(f"| {what[r['variant']]} | {r['w']:g} | {r['nfe']} | {_cells(r)} |")
    lines.append(f"| real digits | – | – | {_cells(results['floor'])} |")
    lines += ["", f"| variant | best FID at accuracy >= {ACCURACY_BOUND} (w) | / CFG's best | "
              "best FID (w, accuracy) | / CFG's best |", "|---|---|---|---|---|"]
    for s in summary(results["rows"], sampler):
      acc = s["best_accurate"]
      cell = "–" if acc is None else f"{acc['fid']:.1f} (w = {acc['w']:g})"
      lines.append(f"| {s['what']} | {cell} | {s['accurate_over_cfg']:.2f} | "
                   f"{s['best']['fid']:.1f} (w = {s['best']['w']:g}, "
                   f"{s['best']['accuracy']:.3f}) | {s['best_over_cfg']:.2f} |")
    lines.append("")
  lines += common.targets_table(results["targets"])
  return "\n".join(lines)


def plot(results: dict[str, Any], sampler: str, path: pathlib.Path) -> None:
  """FID against accuracy, one curve per variant over its w, for one sampler."""
  eval_report.require_matplotlib().use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 5))
  for variant in VARIANTS:
    points = [r for r in results["rows"] if r["sampler"] == sampler
              and r["variant"] == variant.name]
    if points:
      ax.plot([r["accuracy"] for r in points], [r["fid"] for r in points], marker="o",
              label=variant.what)
  ax.axvline(ACCURACY_BOUND, color="gray", linestyle=":")
  ax.axhline(results["floor"]["fid"], color="gray", linestyle="--", label="real digits")
  ax.set_xlabel("accuracy on the intended labels")
  ax.set_ylabel("FID")
  ax.set_yscale("log")
  ax.legend(fontsize=7)
  ax.set_title(f"{sampler}, {results['samples_per_point']} samples a point")
  fig.tight_layout()
  visualization.write_png(fig, path)
  plt.close(fig)


def parse_args(argv: Sequence[str] | None = None) -> Options:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="the trained run (cfg_jax.train)")
  parser.add_argument("--step", type=int, default=None, help="its checkpoint (default: newest)")
  parser.add_argument("--out", default=None, help="default <workdir>/bench_guidance")
  parser.add_argument("--samplers", default=",".join(sampling.SAMPLERS))
  parser.add_argument("--variants", default=",".join(v.name for v in VARIANTS))
  parser.add_argument("--samples_per_point", type=int, default=1000)
  parser.add_argument("--steps", type=int, default=common.QUALITY_STEPS, help="sampling steps")
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--guide_fraction", type=float, default=0.25,
                      help="autoguidance by the run's checkpoint at this fraction of its steps")
  parser.add_argument("--guide_workdir", default=None,
                      help="autoguidance by this smaller run of the same data")
  parser.add_argument("--quick", action="store_true",
                      help=f"the first {QUICK_WS} w of each variant, a tiny eval classifier")
  parser.add_argument("--ws", default=None,
                      help="comma-separated: only these w of each variant's sweep")
  parser.add_argument("--report_only", action="store_true",
                      help="measure nothing: the report and plots of the points on disk")
  args = parser.parse_args(argv)
  try:
    ws = None if args.ws is None else tuple(float(w) for w in args.ws.split(","))
  except ValueError:
    parser.error(f"--ws must be comma-separated numbers, got {args.ws!r}.")
  samplers = [s for s in args.samplers.split(",") if s]
  if not samplers or not set(samplers) <= set(sampling.SAMPLERS):
    parser.error(f"--samplers must be names of {', '.join(sampling.SAMPLERS)}, got "
                 f"{args.samplers!r}.")
  variants = [v for v in args.variants.split(",") if v]
  unknown = sorted(set(variants) - {v.name for v in VARIANTS})
  if not variants or unknown:
    parser.error(f"--variants has unknown names {unknown}; they are "
                 f"{[v.name for v in VARIANTS]}.")
  for name, low in (("samples_per_point", 10), ("steps", 1), ("batch_size", 1)):
    if getattr(args, name) < low:
      parser.error(f"--{name} must be >= {low}, got {getattr(args, name)}.")
  if not 0 < args.guide_fraction < 1:
    parser.error(f"--guide_fraction must lie in (0, 1), got {args.guide_fraction}.")
  workdir = pathlib.Path(args.workdir)
  if not (workdir / config_files.CONFIG_FILE).exists():
    parser.error(f"--workdir={workdir} is not a cfg_jax training run.")
  return Options(workdir, args.step, pathlib.Path(args.out or workdir / "bench_guidance"),
                 samplers, variants, args.samples_per_point, args.steps, args.batch_size,
                 args.seed, args.guide_fraction,
                 None if args.guide_workdir is None else pathlib.Path(args.guide_workdir),
                 args.quick, ws, args.report_only)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
  o = parse_args(argv)
  results = measure(o)
  results["targets"] = targets(results)
  files.write_text_atomic(o.out / "results.json", json.dumps(results, indent=1))
  text = report(results)
  files.write_text_atomic(o.out / "report.md", text + "\n")
  for sampler in o.samplers:
    plot(results, sampler, o.out / f"frontier_{sampler}.png")
  print(text)
  return results


if __name__ == "__main__":
  main()
