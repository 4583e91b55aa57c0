"""Guided distillation measured: the teacher's guided sampler against its few-step students.

    python -m bench.distillation --teacher_workdir=runs/mnist --workdir=bench_distill

distils the teacher (`python -m cfg_jax.distill --config=configs/mnist_distill.py`, resumed
if --workdir holds part of it), then samples at w ∈ {0, 1, 3}: the teacher with DDIM at 64
and 128 guided steps (--teacher_steps; two network passes a step), each stage-2 student in
its own steps (one pass a step). The project's evaluator measures every sample set
(accuracy on the intended labels, FID, IS, precision, recall), and each sampler is timed on
one batch after it is compiled (the fastest of --repeats). Out, under --workdir: report.md, results.json and
grids grid_<sampler>_w<w>.png. `--stage=distill` and `--stage=evaluate` run the halves
apart (time the samplers on the machine the report is about).
"""
from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
from typing import Any, Sequence

import jax

from bench import common
from cfg_jax import config_lib
from cfg_jax import runs
from cfg_jax.evaluation import evaluator as cfg_evaluator

WS = (0., 1., 3.)
TEACHER_STEPS = (64, 128)


def distill_command(teacher_workdir: pathlib.Path, workdir: pathlib.Path, config: pathlib.Path,
                    overrides: Sequence[str]) -> list[str]:
  return [sys.executable, "-m", "cfg_jax.distill", f"--config={config}",
          f"--teacher_workdir={teacher_workdir}", f"--workdir={workdir / 'student'}", *overrides]


def samplers(teacher: runs.Run, workdir: pathlib.Path, teacher_steps: Sequence[int]
             ) -> list[tuple[str, runs.Run, int, int]]:
  """(name, run, steps, network passes per step) of the teacher at each of teacher_steps
  and of every stage-2 student done."""
  out = [(f"teacher_{n}", teacher, n, 2) for n in teacher_steps]
  for steps, folder in runs.distilled_rounds(workdir / "student"):
    out.append((f"student_{steps}", runs.load_run(folder), steps, 1))
  return out


def evaluate(teacher_workdir: pathlib.Path, workdir: pathlib.Path, *, ws: Sequence[float],
             teacher_steps: Sequence[int], samples_per_w: int, batch_size: int, repeats: int,
             seed: int, quick: bool = False) -> dict[str, Any]:
  """Samples and measures every sampler at every w; times each on one batch."""
  teacher = runs.load_run(teacher_workdir, step=json.loads(
      (workdir / "student" / runs.DISTILL_FILE).read_text())["teacher_step"])
  evaluator = cfg_evaluator.Evaluator(teacher.config, cache_dir=workdir / "eval",
                                      num_samples=samples_per_w, batch_size=batch_size,
                                      eval_classifier_config=common.eval_classifier_config(quick))
  labels, rows = evaluator.labels, []
  batch = min(batch_size, len(labels))
  for name, run, steps, passes in samplers(teacher, workdir, teacher_steps):
    sample_fn = runs.make_run_sample_fn(
        run, runs.sampling_spec(run.config, {"num_steps": steps, "sampler": "ddim"}))
    common.progress(f"sampling {name}")
    key = jax.random.PRNGKey(seed)
    seconds = common.timed(lambda: sample_fn(run.params, key, labels[:batch], 1.), repeats)
    samples = {w: x for _, w, x in runs.sample_guidance_grid(sample_fn, run, labels, ws=ws,
                                                             batch_size=batch, seed=seed)}
    cfg_evaluator.write_class_grids(samples, labels, workdir, name,
                                    num_classes=teacher.config.data.num_classes)
    for w in ws:
      rows.append({"sampler": name, "steps": steps, "passes": steps * passes, "w": w,
                   "batch_seconds": seconds, **evaluator.metrics(samples[w])})
  results = {"machine": common.machine(), "samples_per_w": samples_per_w, "batch_size": batch,
             "teacher_workdir": str(teacher_workdir), "teacher_step": teacher.step,
             "rows": rows, "floor": evaluator.floor()}
  results["targets"] = targets(rows)
  return results


def targets(rows: list[dict]) -> dict[str, dict[str, Any]]:
  """The 8-step student against the 128-step teacher at w = 1 and 3: accuracy within 1
  point, FID within 1.2x; the 4-step student's accuracy within 3 points; the 8-step
  student's batch at least 25x faster."""
  def get(sampler, w, key):
    return next((r[key] for r in rows if r["sampler"] == sampler and r["w"] == w), None)

  figures, bounds = {}, {}
  for w in (1., 3.):
    teacher_acc, teacher_fid = get("teacher_128", w, "accuracy"), get("teacher_128", w, "fid")
    for steps, points in ((8, 0.01), (4, 0.03)):
      acc = get(f"student_{steps}", w, "accuracy")
      if acc is not None and teacher_acc is not None:
        name = f"accuracy: teacher 128 - student {steps}, w={w:g}"
        figures[name], bounds[name] = teacher_acc - acc, ("<=", points)
    fid = get("student_8", w, "fid")
    if fid is not None and teacher_fid is not None:
      name = f"FID: student 8 / teacher 128, w={w:g}"
      figures[name], bounds[name] = fid / teacher_fid, ("<=", 1.2)
  slow, fast = get("teacher_128", 1., "batch_seconds"), get("student_8", 1., "batch_seconds")
  if slow and fast:
    figures["speed-up: teacher 128 / student 8"] = slow / fast
    bounds["speed-up: teacher 128 / student 8"] = (">=", 25.)
  return common.judge(figures, bounds)


def report(results: dict[str, Any]) -> str:
  m = results["machine"]
  lines = [f"Teacher {results['teacher_workdir']} at step {results['teacher_step']}; "
           f"{results['samples_per_w']} samples per w, DDIM. Machine: {m['cpu']}, "
           f"{m['cores']} cores, {m.get('device_kind', '')}, jax {m['jax']}.", "",
           "| sampler | steps | passes | w | accuracy | FID | IS | P | R | s / batch of "
           f"{results['batch_size']} |", "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results["rows"]:
    lines.append(f"| {r['sampler']} | {r['steps']} | {r['passes']} | {r['w']:g} | "
                 f"{r['accuracy']:.3f} | {r['fid']:.1f} | {r['inception_score']:.2f} | "
                 f"{r['precision']:.2f} | {r['recall']:.2f} | {r['batch_seconds']:.3f} |")
  f = results["floor"]
  lines.append(f"| real digits | – | – | – | {f['accuracy']:.3f} | {f['fid']:.1f} | "
               f"{f['inception_score']:.2f} | {f['precision']:.2f} | {f['recall']:.2f} | – |")
  return "\n".join(lines + ["", *common.targets_table(results["targets"])])


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--teacher_workdir", required=True, help="the guided teacher's run")
  parser.add_argument("--workdir", default="bench_distill", help="where everything is written")
  parser.add_argument("--config", default=str(common.ROOT / "configs" / "mnist_distill.py"))
  parser.add_argument("--override", action="append", default=[],
                      help="a flag passed on to cfg_jax.distill, e.g. "
                           "--override=--config.distill.round_steps=500")
  parser.add_argument("--samples_per_w", type=int, default=1000)
  parser.add_argument("--ws", default=",".join(f"{w:g}" for w in WS))
  parser.add_argument("--teacher_steps", default=",".join(map(str, TEACHER_STEPS)),
                      help="the teacher's guided DDIM steps (the targets read 128)")
  parser.add_argument("--batch_size", type=int, default=500)
  parser.add_argument("--repeats", type=int, default=3, help="timed calls per sampler")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--stage", choices=("all", "distill", "evaluate"), default="all")
  parser.add_argument("--quick", action="store_true",
                      help="a tiny eval classifier that trains in seconds: checks the code")
  args = parser.parse_args(argv)
  try:
    ws = [float(w) for w in args.ws.split(",")]
  except ValueError:
    parser.error(f"--ws must be comma-separated numbers, got {args.ws!r}.")
  try:
    teacher_steps = [int(n) for n in args.teacher_steps.split(",")]
    if min(teacher_steps) < 1:
      raise ValueError
  except ValueError:
    parser.error(f"--teacher_steps must be comma-separated ints >= 1, got "
                 f"{args.teacher_steps!r}.")
  for name, least in (("samples_per_w", 10), ("batch_size", 1), ("repeats", 1)):
    if getattr(args, name) < least:
      parser.error(f"--{name} must be >= {least}, got {getattr(args, name)}.")
  teacher, workdir = pathlib.Path(args.teacher_workdir), pathlib.Path(args.workdir)
  if not (teacher / "config.json").exists():
    parser.error(f"--teacher_workdir={teacher} is not a training run (no config.json).")
  try:
    config_lib.validate_distill(config_lib.load_config_file(args.config))
  except (ValueError, FileNotFoundError) as e:
    parser.error(f"--config={args.config}: {e}")
  if args.stage in ("all", "distill"):
    common.progress("distilling")
    subprocess.run(distill_command(teacher, workdir, pathlib.Path(args.config), args.override),
                   check=True, cwd=common.ROOT)
  if args.stage in ("all", "evaluate"):
    results = evaluate(teacher, workdir, ws=ws, teacher_steps=teacher_steps,
                       samples_per_w=args.samples_per_w,
                       batch_size=args.batch_size, repeats=args.repeats, seed=args.seed,
                       quick=args.quick)
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    text = report(results)
    (workdir / "report.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
  main()
