"""The mnist recipe's ablation: one change at a time from the recipe before it, same budget.

    python -m bench.ablation --calibrate --out=step_seconds.json   # on the machine of the budget
    python -m bench.ablation --minutes=15 --step_seconds=step_seconds.json --workdir=ablation

A budget is minutes of training on the machine where `--calibrate` timed each variant's
training step (at its batch, 64 unless it changes it; fastest of 5 after compiling), so a
variant that costs more per step gets fewer steps: variant v trains
round(60 · minutes / seconds_per_step[v]) steps.
Training and sampling can then run anywhere (a GPU runs the whole table in minutes);
the steps, not the machine, fix the result (a variant of TIMED_AS trains its base's
steps). Each variant is trained from scratch with
`cfg_jax.train.train`, sampled with the stochastic sampler, 50 steps, at w ∈ {0, 1, 3},
and measured as bench.quality measures (cfg_jax.evaluation.evaluator.Evaluator, on the baseline's 32x32
digits: a variant that models the 28x28 digits unpadded has its samples padded with the
background, as the data pipeline pads the digits). The table goes to
<workdir>/ablation.md and <variant>.json; `--only` picks variants (runs can be split
across processes and merged by rerunning with `--report`). `--guidance_interval=lo,hi`
guides only for λ in [lo, hi] (the table guides every step) and writes to
<workdir>/guided_<lo>_<hi>/; a variant trained before in <workdir> is sampled again, not
retrained.
"""
from __future__ import annotations

import argparse
import json
import pathlib
from typing import Any, Sequence

import numpy as np

from bench import common
from cfg_jax import runs
from cfg_jax import train
from cfg_jax.evaluation import evaluator as cfg_evaluator

WS = (0., 1., 3.)
BATCH = 64

# The mnist recipe before the ablation (configs/mnist.py as it was), as config fields.
BASELINE = {
    "data.image_size": 32,
    **{f"model.{k}": v for k, v in common.SMALL_UNET.items()},
    "model.label_emb_std": 0.125, "diffusion.prediction": "eps", "training.learning_rate": 5e-4,
    "training.lr_schedule": "constant", "training.ema_decay": 0.999,
    "training.batch_size": BATCH,
}
# name: (what changes, the fields changed from BASELINE)
VARIANTS = {
    "baseline": ("the recipe before (ε-MSE, ch 16, attention at 16x16, dropout 0.1, class "
                 "table std 1/8, 8 λ frequencies, constant lr 5e-4, EMA 0.999)", {}),
    "v_prediction": ("v-prediction: v-MSE = ε-MSE weighted by 1 + e^-λ",
                     {"diffusion.prediction": "v"}),
    "width_for_attention": ("no 16x16 attention, conv resampling, ch 24 (same step time)",
                            {"model.attn_resolutions": (), "model.resblock_updown": False,
                             "model.ch": 24, "model.num_head_channels": 24}),
    "no_dropout": ("dropout 0", {"model.dropout": 0.}),
    "class_table_std_1": ("class table initialised at std 1 (ADM)",
                          {"model.label_emb_std": 1.}),
    "logsnr_emb_64": ("λ embedding of 32 frequencies (64 wide)", {"model.logsnr_emb_ch": 64}),
    "lr_cosine": ("learning rate 5e-4 decayed by a half cosine to 0 over the budget",
                  {"training.lr_schedule": "cosine"}),
    "lr_1e-3": ("learning rate 1e-3", {"training.learning_rate": 1e-3}),
    "ema_0.995": ("EMA decay 0.995", {"training.ema_decay": 0.995}),
}


def _combined(what: str, names: Sequence[str], **fields) -> tuple[str, dict[str, Any]]:
  merged = {}
  for name in names:
    merged |= VARIANTS[name][1]
  return what, merged | {k.replace("__", "."): v for k, v in fields.items()}


_KEPT = ("v_prediction", "width_for_attention", "no_dropout", "class_table_std_1",
         "logsnr_emb_64")
VARIANTS |= {
    "combined": _combined("v_prediction + width_for_attention + no_dropout + "
                          "class_table_std_1 + logsnr_emb_64", _KEPT),
    "combined_ema": _combined("combined + EMA 0.995", _KEPT, training__ema_decay=0.995),
    "combined_cosine": _combined("combined + lr 1e-3 with a half-cosine decay", _KEPT,
                                 training__learning_rate=1e-3, training__lr_schedule="cosine"),
    "combined_lr_1e-3": _combined("combined + lr 1e-3", _KEPT, training__learning_rate=1e-3),
    "combined_p_uncond_0.2": _combined("combined + p_uncond 0.2 (∅ drawn for 1 in 5)", _KEPT,
                                       training__p_uncond=0.2),
    "combined_adam_b2_0.99": _combined("combined + Adam β2 0.99 (a shorter memory of the "
                                       "gradients' scale)", _KEPT, training__adam_b2=0.99),
    "combined_28px": _combined("combined on the 28x28 digits as they are (not padded to "
                               "32x32; 23% fewer pixels)", _KEPT, data__image_size=28),
    "combined_batch_32": _combined("combined at batch 32", _KEPT, training__batch_size=32),
}
# The variant that configs/mnist.py is now.
PRESET = "combined_28px"
# Variants that change only the optimizer's settings or the label dropout: a step computes
# what their base's computes, so they are timed as it and train its steps.
TIMED_AS = {"combined_lr_1e-3": "combined", "combined_p_uncond_0.2": "combined",
            "combined_adam_b2_0.99": "combined"}


def variant_config(name: str, extra: dict[str, Any] | None = None):
  """configs/mnist.py with BASELINE, then the variant's fields (and `extra`) set."""
  config = common.preset("mnist")
  for field, value in {**BASELINE, **VARIANTS[name][1], **(extra or {})}.items():
    group, key = field.split(".")
    config[group][key] = value
  return config


def pad_to(x: np.ndarray, size: int) -> np.ndarray:
  """Images [N, H, W, C] in [-1, 1] padded with the background (-1) to size x size."""
  pad_h, pad_w = size - x.shape[1], size - x.shape[2]
  if pad_h < 0 or pad_w < 0 or pad_h % 2 or pad_w % 2:
    raise ValueError(f"images of {x.shape[1]}x{x.shape[2]} cannot be padded evenly to "
                     f"{size}x{size}.")
  return np.pad(x, ((0, 0), (pad_h // 2,) * 2, (pad_w // 2,) * 2, (0, 0)), constant_values=-1.)


def calibrate(names: Sequence[str], repeats: int = 5) -> dict[str, float]:
  """Seconds per training step of each variant on this machine."""
  out = {}
  for name in names:
    common.progress(f"timing {name}")
    config = variant_config(name)
    out[name] = common.TrainStep(config).seconds(config.training.batch_size, repeats)
  return out


def run_variant(name: str, *, steps: int, workdir: pathlib.Path, evaluator: cfg_evaluator.Evaluator,
                seed: int, guidance_interval: Sequence[float] = ()) -> dict[str, Any]:
  """Trains the variant for `steps` (unless done before), samples and measures it at each w
  of WS, guided for λ in guidance_interval (() every step)."""
  config = variant_config(name, {"training.num_steps": steps,
                                 "training.checkpoint_every": steps,
                                 "training.sample_every": steps,
                                 "training.warmup_steps": min(100, steps - 1)})
  run_dir = workdir / name
  common.progress(f"{name}: training {steps} steps")
  train.train(config, str(run_dir))
  spec = runs.sampling_spec(config, {"num_steps": common.QUALITY_STEPS, "sampler": "stochastic",
                                     "guidance_interval": tuple(guidance_interval)})
  samples = runs.sample_ws(runs.load_run(run_dir, step=steps), spec, ws=WS,
                           labels=evaluator.labels, batch_size=500, seed=seed)
  size = evaluator.run_config.data.image_size
  return {"steps": steps, "what": VARIANTS[name][0], "guidance_interval": list(guidance_interval),
          "metrics": {f"{w:g}": evaluator.metrics(pad_to(samples[w], size)) for w in WS}}


def table(results: dict[str, Any], floor: dict[str, float] | None) -> str:
  """The markdown table: per variant, steps and accuracy / FID / IS at each w."""
  head = " | ".join(f"w={w:g}: acc | FID | IS" for w in WS)
  lines = [f"| variant | change | steps | {head} |", "|---" * (3 + 3 * len(WS)) + "|"]
  for name in VARIANTS:
    if name not in results:
      continue
    r = results[name]
    cells = " | ".join(f"{m['accuracy']:.3f} | {m['fid']:.1f} | {m['inception_score']:.2f}"
                       for m in (r["metrics"][f"{w:g}"] for w in WS))
    lines.append(f"| {name} | {r['what']} | {r['steps']:,} | {cells} |")
  if floor:
    lines.append("| real digits | same count | – | " + " | ".join(
        f"{floor['accuracy']:.3f} | {floor['fid']:.1f} | {floor['inception_score']:.2f}"
        for _ in WS) + " |")
  return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--calibrate", action="store_true",
                      help="time each variant's training step here and write it to --out")
  parser.add_argument("--out", default="ablation_step_seconds.json")
  parser.add_argument("--minutes", type=float, default=15.)
  parser.add_argument("--step_seconds", default=None,
                      help="--calibrate's JSON (default: calibrate on this machine first)")
  parser.add_argument("--workdir", default="bench_ablation")
  parser.add_argument("--only", default=None, help="comma-separated variants (default: all)")
  parser.add_argument("--samples_per_w", type=int, default=1000)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--guidance_interval", default="",
                      help="lo,hi: guide only for λ in [lo, hi]; the results go to "
                           "<workdir>/guided_<lo>_<hi>/ (default: every step, in <workdir>)")
  parser.add_argument("--report", action="store_true",
                      help="only write the table of the variants already run in --workdir")
  args = parser.parse_args(argv)
  names = args.only.split(",") if args.only else list(VARIANTS)
  unknown = sorted(set(names) - set(VARIANTS))
  if unknown:
    parser.error(f"--only has unknown variants {unknown}; they are {list(VARIANTS)}.")
  if not args.minutes > 0:
    parser.error(f"--minutes must be positive, got {args.minutes}.")
  interval = common.guidance_interval_flag(parser, args.guidance_interval)
  timed = sorted({TIMED_AS.get(name, name) for name in names})
  if args.calibrate:
    seconds = calibrate(timed)
    pathlib.Path(args.out).write_text(json.dumps({"machine": common.machine(),
                                                  "seconds": seconds}, indent=1))
    print(json.dumps(seconds, indent=1))
    return
  if not args.report:
    seconds = (json.loads(pathlib.Path(args.step_seconds).read_text())["seconds"]
               if args.step_seconds else calibrate(timed))
    untimed = sorted(set(timed) - set(seconds))
    if untimed:
      parser.error(f"--step_seconds has no step time for {untimed}; calibrate them first.")
    steps = {name: round(60 * args.minutes / seconds[TIMED_AS.get(name, name)])
             for name in names}
  workdir = pathlib.Path(args.workdir)
  out = workdir / f"guided_{interval[0]:g}_{interval[1]:g}" if interval else workdir
  out.mkdir(parents=True, exist_ok=True)
  if not args.report:
    evaluator = cfg_evaluator.Evaluator(variant_config("baseline"), cache_dir=workdir / "eval",
                                  num_samples=args.samples_per_w)
    for name in names:
      result = run_variant(name, steps=steps[name], workdir=workdir, evaluator=evaluator,
                           seed=args.seed, guidance_interval=interval)
      (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    (out / "floor.json").write_text(json.dumps(evaluator.floor(), indent=1))
  results = {p.stem: json.loads(p.read_text()) for p in out.glob("*.json")
             if p.stem in VARIANTS}
  floor_path = out / "floor.json"
  floor = json.loads(floor_path.read_text()) if floor_path.exists() else None
  text = table(results, floor)
  (out / "ablation.md").write_text(text + "\n")
  print(text)


if __name__ == "__main__":
  main()
