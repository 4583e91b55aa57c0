"""Sample quality per minute of training: ours against the diffusers peer, in one run.

    python -m bench.quality --minutes=45 --report_minutes=15,45   # the benchmark
    python -m bench.quality --minutes=2 --samples_per_w=100       # the test suite's run

It trains a preset (configs/mnist.py) on the offline MNIST digits for a wall-clock budget,
then trains the diffusers peer (bench/peer_quality.py) on the same digits for the same
minutes, one after the other on the same machine. Each stops at every `--report_minutes`
mark and keeps its weights of that moment (ours: `python -m cfg_jax.train` stopped by
SIGTERM, which saves the step and exits; then resumed). Both are then sampled with 50
steps at w ∈ {0, 0.5, 1, 2, 3}, with a stochastic sampler (ours: the paper's, v = 0.3;
the peer: DDPM's ancestral one) and DDIM, and measured by the project's evaluator: the
eval classifier's features and logits (FID, IS, precision/recall, accuracy on the intended
labels), against the statistics of all the digits. Beside them: the floor, the same
number of real digits measured the same way (their accuracy is the classifier's on its
held-out digits).

Out, under --workdir: report.md (the tables and targets), results.json, sample grids
(`grid_<model>_<sampler>_w<w>.png`, 8 per class) and quality_vs_w.png. The stages can
run apart: `--stage=train` on the machine whose minutes are measured, `--stage=evaluate`
later (elsewhere, on a copy of the workdir, `--report_minutes` choosing among the marks
trained): the samples do not depend on where they are drawn. Without torch and diffusers
(`pip install -e ".[bench]"`) the peer is skipped.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import math
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any, Sequence

import numpy as np

from bench import common
from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import files
from cfg_jax import input_pipeline
from cfg_jax import models
from cfg_jax import runs
from cfg_jax import sampling
from cfg_jax import train
from cfg_jax import visualization
from cfg_jax.evaluation import evaluator
from cfg_jax.evaluation import real_data
from cfg_jax.evaluation import report as eval_report

WS = (0., 0.5, 1., 2., 3.)
SAMPLERS = sampling.SAMPLERS
PEER_SAMPLER = {"stochastic": "ddpm", "ddim": "ddim"}  # the peer's scheduler of the same kind
UNBOUNDED = 10**9  # num_steps, checkpoint_every, sample_every: the clock stops training


def has_peer() -> bool:
  """Whether torch and diffusers are installed (the `bench` extra)."""
  return all(importlib.util.find_spec(m) is not None for m in ("torch", "diffusers"))


def check_minutes(minutes: float, report_minutes: Sequence[float] | None) -> list[float]:
  """The report marks (default: the end alone); ValueError naming the bad flag."""
  if not (math.isfinite(minutes) and minutes > 0):
    raise ValueError(f"--minutes must be a positive number, got {minutes}.")
  marks = list(report_minutes or [minutes])
  if any(not (0 < b) for b in marks) or any(b <= a for a, b in zip(marks, marks[1:])):
    raise ValueError(f"--report_minutes must be positive and increasing, got {marks}.")
  if marks[-1] != minutes:
    raise ValueError(f"--report_minutes must end at --minutes={minutes:g}, got {marks}.")
  return marks


# ---------------------------------------------------------------------------- training


def train_ours(config_path: pathlib.Path, workdir: pathlib.Path, *,
               report_minutes: Sequence[float], overrides: Sequence[str] = ()) -> list[dict]:
  """Trains `python -m cfg_jax.train` until each mark, stopping it there by SIGTERM.

  The clock starts with the first process; each later segment resumes from the step
  saved at the mark before (its start-up counts against the budget). Returns, per mark,
  the minutes, the saved step and the seconds since the start.
  """
  command = [sys.executable, "-m", "cfg_jax.train", f"--config={config_path}",
             f"--workdir={workdir}", f"--config.training.num_steps={UNBOUNDED}",
             f"--config.training.checkpoint_every={UNBOUNDED}",
             f"--config.training.sample_every={UNBOUNDED}", *overrides]
  start, reports = time.monotonic(), []
  for minutes in report_minutes:
    common.progress(f"training ours until minute {minutes:g}")
    process = subprocess.Popen(command)
    try:
      process.wait(timeout=max(start + 60 * minutes - time.monotonic(), 0.))
      raise RuntimeError(f"cfg_jax.train exited with {process.returncode} before minute "
                         f"{minutes:g}; its log is above.")
    except subprocess.TimeoutExpired:
      process.send_signal(signal.SIGTERM)
    if process.wait() != train.PREEMPTED_EXIT_CODE:
      raise RuntimeError(f"cfg_jax.train exited with {process.returncode} on SIGTERM, not "
                         f"{train.PREEMPTED_EXIT_CODE}; its log is above.")
    checkpointer = checkpointing.Checkpointer(workdir, read_only=True)
    step = checkpointer.latest_step()
    checkpointer.close()
    reports.append({"minutes": minutes, "step": step,
                    "seconds": round(time.monotonic() - start, 1)})
  return reports


def write_data(run_config: Any, path: pathlib.Path) -> None:
  """The run's data as the peer reads it: x float32 [N, H, W, C] in [-1, 1], label [N]."""
  dataset = input_pipeline.create_dataset(run_config, process_index=0, process_count=1)
  x, labels = real_data.read_examples(dataset, len(dataset))
  files.write_npz_atomic(path, x=x.astype(np.float32), label=labels.astype(np.int64))


def peer(*args: str) -> None:
  """Runs `python -m bench.peer_quality <args>` in its own process (torch apart from jax)."""
  subprocess.run([sys.executable, "-m", "bench.peer_quality", *args], check=True,
                 cwd=common.ROOT)


# -------------------------------------------------------------------------- evaluation


def sample_peer(checkpoint: pathlib.Path, *, sampler: str, ws: Sequence[float],
                labels: np.ndarray, steps: int, batch_size: int, seed: int,
                scratch: pathlib.Path) -> dict[float, np.ndarray]:
  """Samples of the peer's checkpoint for each w: uint8 images (bench.peer_quality)."""
  labels_path, out = scratch / "labels.npz", scratch / f"peer_{sampler}.npz"
  files.write_npz_atomic(labels_path, label=labels.astype(np.int64))
  peer("sample", f"--checkpoint={checkpoint}", f"--config={checkpoint.parent / 'train_log.json'}",
       f"--labels={labels_path}",
       f"--ws={','.join(f'{w:g}' for w in ws)}", f"--sampler={PEER_SAMPLER[sampler]}",
       f"--steps={steps}", f"--seed={seed}", f"--batch_size={batch_size}", f"--out={out}")
  with np.load(out) as f:
    return {w: f["x"][i] for i, w in enumerate(ws)}


# ------------------------------------------------------------------------------ report


def targets(rows: list[dict], floor: dict[str, float], marks: Sequence[float]
            ) -> dict[str, dict[str, Any]]:
  """The targets, on the stochastic sampler: accuracy at minutes 15 and 45 (where reported);
  at the last mark the best FID against the real digits', FID at w = 3 against the best,
  IS rising with w and above the peer's at every w."""
  def ours(minutes, w, key):
    return next((r["ours"][key] for r in rows if r["minutes"] == minutes and r["w"] == w
                 and r["sampler"] == "stochastic"), math.nan)

  figures, bounds = {}, {}
  for minutes, at_1, at_3 in ((15, 0.95, 0.98), (45, 0.98, 0.99)):
    if minutes in marks:
      figures[f"accuracy w=1 at {minutes} min"], bounds[f"accuracy w=1 at {minutes} min"] = (
          ours(minutes, 1., "accuracy"), (">=", at_1))
      figures[f"accuracy w=3 at {minutes} min"], bounds[f"accuracy w=3 at {minutes} min"] = (
          ours(minutes, 3., "accuracy"), (">=", at_3))
  last = marks[-1]
  fids = {r["w"]: r["ours"]["fid"] for r in rows
          if r["minutes"] == last and r["sampler"] == "stochastic"}
  best = min(fids.values())
  figures["best FID / floor"], bounds["best FID / floor"] = best / floor["fid"], ("<=", 1.3)
  if 3. in fids:
    figures["FID w=3 / best FID"], bounds["FID w=3 / best FID"] = fids[3.] / best, ("<=", 2.)
  last_rows = [r for r in rows if r["minutes"] == last and r["sampler"] == "stochastic"]
  scores = [r["ours"]["inception_score"] for r in sorted(last_rows, key=lambda r: r["w"])]
  if len(scores) > 1:
    name = "IS rise between consecutive w, smallest"
    figures[name] = min(b - a for a, b in zip(scores, scores[1:]))
    bounds[name] = (">=", 0.)
  if all(r.get("peer") for r in last_rows):
    name = "IS ours - peer, smallest over w"
    figures[name] = min(r["ours"]["inception_score"] - r["peer"]["inception_score"]
                        for r in last_rows)
    bounds[name] = (">=", 0.)
  return common.judge(figures, bounds)


def _cells(m: dict[str, float] | None) -> str:
  if not m:
    return "– | – | – | – | –"
  return (f"{m['accuracy']:.3f} | {m['fid']:.1f} | {m['inception_score']:.2f} | "
          f"{m['precision']:.2f} | {m['recall']:.2f}")


def report(results: dict[str, Any]) -> str:
  """The markdown of results.json: training, the side-by-side table, the targets."""
  lines = [f"Machine (training): {results['machine']['cpu']}, {results['machine']['cores']} "
           f"cores, jax {results['machine']['jax']}; evaluation on "
           f"{results['eval_machine']['device_kind']}.", "",
           "| model | minutes | steps | parameters |", "|---|---|---|---|"]
  for name in ("ours", "peer"):
    for r in results["training"].get(name, []):
      lines.append(f"| {name} | {r['minutes']:g} | {r['step']:,} | "
                   f"{results['params'].get(name, 0):,} |")
  n, interval = results["samples_per_w"], results["guidance_interval"]
  guided = f"for λ in [{interval[0]:g}, {interval[1]:g}]" if interval else "at every step"
  lines += ["", f"{n} samples per w, {results['steps']} steps; ours guided {guided}, the "
            "peer at every step. Columns: accuracy on the intended labels, FID, IS, "
            "precision, recall (eval-classifier features).", "",
            "| minutes | sampler | w | ours: acc | FID | IS | P | R "
            "| peer: acc | FID | IS | P | R |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    lines.append(f"| {r['minutes']:g} | {r['sampler']} | {r['w']:g} | {_cells(r['ours'])} | "
                 f"{_cells(r.get('peer'))} |")
  lines.append(f"| real digits | – | – | {_cells(results['floor'])} | | | | | |")
  lines += ["", *common.targets_table(results["targets"])]
  return "\n".join(lines)


def plot(results: dict[str, Any], path: pathlib.Path) -> None:
  """Accuracy and FID against w at the last mark, per model and sampler."""
  eval_report.require_matplotlib().use("Agg")
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  last = results["report_minutes"][-1]
  fig, axes = plt.subplots(1, 2, figsize=(10, 4))
  for model in ("ours", "peer"):
    for sampler in SAMPLERS:
      rows = [r for r in results["rows"] if r["minutes"] == last and r["sampler"] == sampler
              and r.get(model)]
      if rows:
        ws = [r["w"] for r in rows]
        for ax, key in zip(axes, ("accuracy", "fid")):
          ax.plot(ws, [r[model][key] for r in rows], marker="o",
                  linestyle="-" if model == "ours" else "--", label=f"{model}, {sampler}")
  for ax, key, label in zip(axes, ("accuracy", "fid"), ("accuracy on intended labels", "FID")):
    ax.axhline(results["floor"][key], color="gray", linestyle=":", label="real digits")
    ax.set_xlabel("w")
    ax.set_ylabel(label)
  axes[1].set_yscale("log")
  axes[0].legend(fontsize=8)
  fig.suptitle(f"after {last:g} minutes of training, {results['samples_per_w']} samples per w")
  fig.tight_layout()
  visualization.write_png(fig, path)
  plt.close(fig)


# ------------------------------------------------------------------------------ stages


@dataclasses.dataclass
class Options:
  workdir: pathlib.Path
  config: pathlib.Path
  minutes: float
  report_minutes: list[float]
  samples_per_w: int
  ws: list[float]
  steps: int
  batch_size: int
  seed: int
  peer: bool
  overrides: list[str]
  guidance_interval: tuple[float, ...] | None = None  # None: the run's; () every step
  samplers: Sequence[str] = SAMPLERS
  quick: bool = False


def stage_train(o: Options) -> None:
  """Trains ours, then the peer, for the same minutes; writes <workdir>/training.json."""
  o.workdir.mkdir(parents=True, exist_ok=True)
  training = {"machine": common.machine(), "minutes": o.minutes,
              "report_minutes": o.report_minutes}
  training["ours"] = train_ours(o.config, o.workdir / "ours", report_minutes=o.report_minutes,
                                overrides=o.overrides)
  if o.peer:
    data = o.workdir / "data.npz"
    write_data(config_files.load_config(o.workdir / "ours"), data)  # overrides included
    common.progress(f"training the peer for {o.minutes:g} minutes")
    peer("train", f"--data={data}", f"--minutes={o.minutes:g}",
         f"--report_minutes={','.join(f'{m:g}' for m in o.report_minutes)}",
         f"--out={o.workdir / 'peer'}", f"--seed={o.seed}")
    log = json.loads((o.workdir / "peer" / "train_log.json").read_text())
    training["peer"] = [{"minutes": r["minutes"], "step": r["steps"],
                         "seconds": r["seconds"]} for r in log["reports"]]
    training["peer_params"] = log["num_params"]
  (o.workdir / "training.json").write_text(json.dumps(training, indent=1))


def stage_evaluate(o: Options) -> dict[str, Any]:
  """Samples both models at every mark, sampler and w; writes the report and pictures."""
  training = json.loads((o.workdir / "training.json").read_text())
  run_config = config_files.load_config(o.workdir / "ours")
  measure = evaluator.Evaluator(run_config, cache_dir=o.workdir / "eval",
                                num_samples=o.samples_per_w,
                                eval_classifier_config=common.eval_classifier_config(o.quick))
  labels, num_classes = measure.labels, run_config.data.num_classes
  interval = tuple(run_config.sampling.guidance_interval if o.guidance_interval is None
                   else o.guidance_interval)
  with_peer = o.peer and "peer" in training
  rows = []
  for mark in o.report_minutes:
    ours_step = next(r["step"] for r in training["ours"] if r["minutes"] == mark)
    run = runs.load_run(o.workdir / "ours", step=ours_step)
    for sampler in o.samplers:
      common.progress(f"sampling ours at minute {mark:g}, {sampler}")
      spec = runs.sampling_spec(run_config, {"num_steps": o.steps, "sampler": sampler,
                                             "guidance_interval": interval})
      ours = runs.sample_ws(run, spec, ws=o.ws, labels=labels, batch_size=o.batch_size,
                         seed=o.seed)
      theirs = {}
      if with_peer:
        common.progress(f"sampling the peer at minute {mark:g}, {PEER_SAMPLER[sampler]}")
        theirs = sample_peer(o.workdir / "peer" / f"minute_{mark:g}.pt", sampler=sampler,
                             ws=o.ws, labels=labels, steps=o.steps, batch_size=o.batch_size,
                             seed=o.seed, scratch=o.workdir / "eval")
      if mark == training["report_minutes"][-1]:
        evaluator.write_class_grids(ours, labels, o.workdir, f"ours_{sampler}",
                                    num_classes=num_classes)
        if theirs:
          evaluator.write_class_grids(theirs, labels, o.workdir, f"peer_{sampler}",
                                      num_classes=num_classes)
      for w in o.ws:
        rows.append({"minutes": mark, "sampler": sampler, "w": w,
                     "ours": measure.metrics(ours[w]),
                     "peer": measure.metrics(theirs[w]) if theirs else None})
  floor = measure.floor()
  results = {"machine": training["machine"], "eval_machine": common.machine(),
             "report_minutes": o.report_minutes, "samples_per_w": o.samples_per_w,
             "steps": o.steps, "guidance_interval": list(interval), "rows": rows, "floor": floor,
             "training": {k: training[k] for k in ("ours", "peer") if k in training},
             "params": {"ours": models.num_params(models.create_model(run_config), run_config),
                        "peer": training.get("peer_params", 0)}}
  results["targets"] = targets(rows, floor, o.report_minutes)
  (o.workdir / "results.json").write_text(json.dumps(results, indent=1))
  text = report(results)
  (o.workdir / "report.md").write_text(text + "\n")
  plot(results, o.workdir / "quality_vs_w.png")
  print(text)
  return results


def parse_args(argv: Sequence[str] | None = None) -> tuple[Options, str]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--minutes", type=float, default=45.,
                      help="wall-clock minutes of training for each model")
  parser.add_argument("--report_minutes", default=None,
                      help="comma-separated marks to evaluate, ending at --minutes (default: "
                           "--minutes alone); with --stage=evaluate, which of the trained marks "
                           "to measure (default: all)")
  parser.add_argument("--workdir", default="bench_quality", help="where everything is written")
  parser.add_argument("--config", default=str(common.ROOT / "configs" / "mnist.py"),
                      help="the preset trained (ours)")
  parser.add_argument("--samples_per_w", type=int, default=1000)
  parser.add_argument("--ws", default=",".join(f"{w:g}" for w in WS))
  parser.add_argument("--steps", type=int, default=common.QUALITY_STEPS, help="sampling steps")
  parser.add_argument("--batch_size", type=int, default=500, help="sampling batch")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--guidance_interval", default=None,
                      help="lo,hi: guide ours only for λ in [lo, hi]; empty: every step "
                           "(default: the preset's config.sampling.guidance_interval)")
  parser.add_argument("--samplers", default=",".join(SAMPLERS),
                      help=f"comma-separated, of {','.join(SAMPLERS)}: the samplers evaluated")
  parser.add_argument("--stage", choices=("all", "train", "evaluate"), default="all")
  parser.add_argument("--no_peer", action="store_true", help="ours only")
  parser.add_argument("--quick", action="store_true",
                      help="a tiny eval classifier that trains in seconds: checks the code")
  parser.add_argument("--override", action="append", default=[],
                      help="a flag passed on to cfg_jax.train, e.g. --override=--config.seed=1")
  args = parser.parse_args(argv)
  try:
    ws = [float(w) for w in args.ws.split(",")]
    if not all(math.isfinite(w) for w in ws):
      raise ValueError
  except ValueError:
    parser.error(f"--ws must be a comma-separated list of finite numbers, got {args.ws!r}.")
  try:
    marks = args.report_minutes and [float(m) for m in args.report_minutes.split(",")]
    if args.stage != "evaluate":
      marks = check_minutes(args.minutes, marks)
  except ValueError as e:
    parser.error(str(e) if str(e).startswith("--") else
                 f"--report_minutes must be comma-separated numbers, got {args.report_minutes!r}.")
  interval = common.guidance_interval_flag(parser, args.guidance_interval)
  samplers = [s.strip() for s in args.samplers.split(",") if s.strip()]
  if not samplers or not set(samplers) <= set(SAMPLERS) or len(set(samplers)) < len(samplers):
    parser.error(f"--samplers must be distinct names of {', '.join(SAMPLERS)}, got "
                 f"{args.samplers!r}.")
  for name in ("samples_per_w", "steps", "batch_size"):
    if getattr(args, name) < (10 if name == "samples_per_w" else 1):
      parser.error(f"--{name} must be >= {10 if name == 'samples_per_w' else 1}, "
                   f"got {getattr(args, name)}.")
  if not pathlib.Path(args.config).is_file():
    parser.error(f"--config={args.config} does not exist.")
  if args.stage != "evaluate" and (pathlib.Path(args.workdir) / "training.json").exists():
    parser.error(f"--workdir={args.workdir} already holds a trained benchmark; give a new "
                 f"one, or --stage=evaluate to measure it again.")
  if args.stage == "evaluate":
    training = pathlib.Path(args.workdir) / "training.json"
    if not training.exists():
      parser.error(f"--workdir={args.workdir} has no training.json: run --stage=train first.")
    trained = json.loads(training.read_text())["report_minutes"]
    marks = sorted(set(marks or trained))
    if not set(marks) <= set(trained):
      parser.error(f"--report_minutes must be marks --workdir={args.workdir} was trained to "
                   f"({','.join(f'{m:g}' for m in trained)}), got {args.report_minutes!r}.")
  with_peer = not args.no_peer and has_peer()
  if not args.no_peer and not with_peer:
    print("bench.quality: torch or diffusers is not installed (pip install -e \".[bench]\"): "
          "the peer is skipped.", flush=True)
  return Options(pathlib.Path(args.workdir), pathlib.Path(args.config), args.minutes, marks,
                 args.samples_per_w, ws, args.steps, args.batch_size, args.seed, with_peer,
                 args.override, interval, samplers, args.quick), args.stage


def main(argv: Sequence[str] | None = None) -> None:
  options, stage = parse_args(argv)
  if stage in ("all", "train"):
    stage_train(options)
  if stage in ("all", "evaluate"):
    stage_evaluate(options)


if __name__ == "__main__":
  main()
