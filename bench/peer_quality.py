"""The PyTorch peer of the sample-quality benchmark: a typical diffusers CFG script.

    python -m bench.peer_quality train --data=DATA.npz --minutes=45 --report_minutes=15,45 \
        --out=DIR [--seed=0]
    python -m bench.peer_quality sample --checkpoint=DIR/minute_45.pt --config=DIR/train_log.json \
        --labels=LABELS.npz --ws=0,0.5,1,2,3 --sampler=ddim|ddpm --steps=50 [--seed=0] \
        [--batch_size=500] --out=OUT.npz

What a typical user writes with diffusers for classifier-free guidance on MNIST:
`UNet2DModel` with class embeddings of 10 digits and a null class ∅ (index 10), labels
dropped to ∅ with probability P_UNCOND = 0.1, `DDPMScheduler` with 1000 steps of the cosine
("squaredcos_cap_v2") schedule, ε-prediction MSE at uniform integer timesteps, AdamW at
lr LR = 1e-3 (the usual value for short MNIST runs; torch's defaults otherwise, weight decay
0.01), batch 64 reshuffled every epoch (a `DataLoader`), no gradient clipping, and
diffusers' `EMAModel` with decay 0.999 (its default schedule min(0.999, (1 + n) / (10 + n))).
Float32 on the CPU. Importing this module calls `torch.set_num_threads(os.cpu_count())`; it
never imports jax, so the benchmark runs it in its own process.

The default model (`build_model()`) is the block layout of the diffusers course's class-
conditioned MNIST UNet: block_out_channels (32, 64, 64), one ResNet per block, attention at
the two lower resolutions (DownBlock2D, AttnDownBlock2D, AttnDownBlock2D), 1,164,513
parameters. On the idle 2-core CPU, for 32x32 digits, a training step at batch 64 takes
about 0.74 s and one guided sampling step at batch 500 (a forward at 1000) about 9 s.

train: `--data` is an npz of `x` float32 [N, S, S, 1] (NHWC, in [-1, 1]; S = 28 for the digits
as they are, 32 padded, any S divisible by 4) and `label` int [N] in [0, 10); the model is
built for S (`sample_size`). Training runs for `--minutes` of wall clock from when the model is built; at
each mark of `--report_minutes` (increasing, the last equal to `--minutes`, fractions allowed)
the EMA weights go to `DIR/minute_<m>.pt` (m as Python's `f"{m:g}"`, e.g. minute_15.pt,
minute_0.05.pt; `torch.save` of the state_dict, written atomically). At the end
`DIR/train_log.json` holds "model" (`build_model`'s arguments), "num_params", the training
settings, "versions" (torch, diffusers) and "reports": for each mark its "minutes", "steps",
"seconds", "num_params" and "checkpoint" (the file name).

sample: `--config` is that train_log.json (its "model" rebuilds the architecture); `--labels`
an npz with `label` int [N]. For each w, classifier-free guidance
ε̃ = (1 + w) ε(z, c) − w ε(z, ∅) (the paper's w: w = 0 is the conditional model), one forward
on [z; z] with labels [c; ∅] per step, through `DDIMScheduler` (eta 0) or `DDPMScheduler`
(ancestral) built from the training scheduler's config, `set_timesteps(--steps)`. Every w
starts from the same noise (and, for ddpm, the same step noise): a generator seeded with
`--seed` per w, drawn batch by batch. `--out` is an npz of `x` uint8 [len(ws), N, S, S, 1]
(NHWC, [-1, 1] mapped to round((x + 1) 127.5) clipped to [0, 255]), `ws` float32 [len(ws)]
and `label` int64 [N].

A bad flag exits with status 2 and one line on stderr naming it, before any model is built.
"""
import argparse
import copy
import json
import os
import sys
import time
from typing import Any, Callable, Sequence

import diffusers
import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
from diffusers.training_utils import EMAModel

torch.set_num_threads(os.cpu_count())

NUM_CLASSES = 10
NULL = NUM_CLASSES     # the class-embedding row of ∅
IMAGE_SIZE = 32
P_UNCOND = 0.1
LR = 1e-3
BATCH_SIZE = 64
EMA_DECAY = 0.999
NUM_TRAIN_TIMESTEPS = 1000
SAMPLERS = ("ddim", "ddpm")


def build_model(block_out_channels: Sequence[int] = (32, 64, 64), layers_per_block: int = 1,
                norm_num_groups: int = 32, sample_size: int = IMAGE_SIZE) -> UNet2DModel:
  """The peer's UNet2DModel: a plain first block, attention blocks below it, 11 class rows,
  for sample_size x sample_size digits.

  The defaults are the typical 1,164,513-parameter model; tests pass a smaller one.
  """
  n = len(block_out_channels)
  down = ("DownBlock2D",) + ("AttnDownBlock2D",) * (n - 1)
  up = ("AttnUpBlock2D",) * (n - 1) + ("UpBlock2D",)
  return UNet2DModel(sample_size=sample_size, in_channels=1, out_channels=1,
                     block_out_channels=tuple(block_out_channels),
                     layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
                     down_block_types=down, up_block_types=up,
                     num_class_embeds=NUM_CLASSES + 1)


def num_params(model: torch.nn.Module) -> int:
  """Number of parameters of model."""
  return sum(p.numel() for p in model.parameters())


def train_scheduler() -> DDPMScheduler:
  """The training noise schedule: 1000 steps of the cosine schedule, diffusers' defaults."""
  return DDPMScheduler(num_train_timesteps=NUM_TRAIN_TIMESTEPS,
                       beta_schedule="squaredcos_cap_v2")


def _write_atomic(path: str, write: Callable[[Any], None]) -> None:
  """write(f) into a temporary file beside path, which is then renamed onto it."""
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    write(f)
  os.replace(tmp, path)


def checkpoint_name(minutes: float) -> str:
  return f"minute_{minutes:g}.pt"


def train(x: np.ndarray, labels: np.ndarray, *, minutes: float,
          report_minutes: Sequence[float], out: str, seed: int = 0,
          model_config: dict | None = None) -> dict:
  """Trains for `minutes` of wall clock, saving the EMA weights at each report mark.

  x: float32 [N, S, S, 1] NHWC in [-1, 1]; labels: int [N]. model_config: build_model's
  arguments (default: the typical model; sample_size is set to S). Returns the log also
  written to out/train_log.json.
  """
  marks = list(report_minutes)
  if not marks or marks[-1] != minutes or any(b <= a for a, b in zip([0.] + marks, marks)):
    raise ValueError(f"report_minutes must be positive, increasing and end at minutes={minutes}, "
                     f"got {marks}.")
  if not len(x) or len(x) != len(labels):
    raise ValueError(f"x and labels must hold the same N > 0 examples, "
                     f"got {len(x)} and {len(labels)}.")
  os.makedirs(out, exist_ok=True)
  model_config = dict(model_config or {}, sample_size=int(np.shape(x)[1]))
  torch.manual_seed(seed)
  images = torch.from_numpy(np.ascontiguousarray(np.asarray(x, np.float32).transpose(0, 3, 1, 2)))
  loader = torch.utils.data.DataLoader(
      torch.utils.data.TensorDataset(images, torch.as_tensor(np.asarray(labels), dtype=torch.long)),
      batch_size=BATCH_SIZE, shuffle=True, generator=torch.Generator().manual_seed(seed))
  model = build_model(**model_config)
  ema_model = copy.deepcopy(model)  # holds the EMA weights when a checkpoint is written
  ema = EMAModel(model.parameters(), decay=EMA_DECAY)
  optimizer = torch.optim.AdamW(model.parameters(), lr=LR)
  scheduler = train_scheduler()
  n_params = num_params(model)
  start = time.perf_counter()

  reports, steps, pending = [], 0, marks
  model.train()
  while pending:
    for clean, c in loader:
      noise = torch.randn_like(clean)
      t = torch.randint(0, NUM_TRAIN_TIMESTEPS, (clean.shape[0],))
      c = torch.where(torch.rand(c.shape[0]) < P_UNCOND, NULL, c)
      pred = model(scheduler.add_noise(clean, noise, t), t, class_labels=c).sample
      loss = F.mse_loss(pred, noise)
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      ema.step(model.parameters())
      steps += 1
      seconds = time.perf_counter() - start
      while pending and seconds >= 60. * pending[0]:
        m = pending.pop(0)
        ema.copy_to(ema_model.parameters())
        state = ema_model.state_dict()
        _write_atomic(os.path.join(out, checkpoint_name(m)), lambda f: torch.save(state, f))
        reports.append({"minutes": m, "steps": steps, "seconds": seconds,
                        "num_params": n_params, "checkpoint": checkpoint_name(m)})
      if not pending:
        break

  log = {"model": model_config, "num_params": n_params, "seed": seed, "lr": LR,
         "batch_size": BATCH_SIZE, "p_uncond": P_UNCOND, "ema_decay": EMA_DECAY,
         "num_examples": len(images),
         "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__},
         "reports": reports}
  _write_atomic(os.path.join(out, "train_log.json"),
                lambda f: f.write(json.dumps(log, indent=2).encode()))
  return log


def load_model(checkpoint: str, config: str) -> UNet2DModel:
  """The model of train_log.json `config` with the weights of `checkpoint`, in eval mode."""
  with open(config) as f:
    model = build_model(**json.load(f)["model"])
  model.load_state_dict(torch.load(checkpoint, map_location="cpu"))
  return model.eval()


def guided_eps(model: torch.nn.Module, z: torch.Tensor, t, labels: torch.Tensor,
               w: float) -> torch.Tensor:
  """ε̃ = (1 + w) ε(z, c) − w ε(z, ∅), from one forward on [z; z] with labels [c; ∅].

  At w = 0 that is ε(z, c), one forward on z alone. t: a scalar timestep or one per example.
  """
  t = torch.as_tensor(t, device=z.device)
  labels = torch.as_tensor(labels, dtype=torch.long, device=z.device)
  if w == 0:
    return model(z, t, class_labels=labels).sample
  if t.ndim == 1:
    t = torch.cat([t, t])
  eps = model(torch.cat([z, z]), t,
              class_labels=torch.cat([labels, torch.full_like(labels, NULL)])).sample
  eps_c, eps_u = eps.chunk(2)
  return (1. + w) * eps_c - w * eps_u


def make_sampler(sampler: str, steps: int):
  """DDIMScheduler (eta 0) or DDPMScheduler from the training config, set to `steps` steps."""
  if sampler not in SAMPLERS:
    raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}.")
  cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
  scheduler = cls.from_config(train_scheduler().config)
  scheduler.set_timesteps(steps)
  return scheduler


def to_uint8(x: np.ndarray) -> np.ndarray:
  """[-1, 1] to uint8 [0, 255], rounded and clipped (as cfg_jax.visualization.to_uint8)."""
  return np.clip(np.round((np.asarray(x, np.float32) + 1.) * 127.5), 0, 255).astype(np.uint8)


def sample(model: torch.nn.Module, labels: np.ndarray, *, w: float, sampler: str, steps: int,
           seed: int = 0, batch_size: int = 500) -> np.ndarray:
  """Guided samples for labels: uint8 [N, S, S, 1] NHWC, S the model's sample_size.

  The noise comes from one CPU generator seeded with `seed`, drawn batch by batch, so a
  seed gives the same noise on the model's device, whichever it is.
  """
  model.eval()
  device = next(model.parameters()).device
  labels = torch.as_tensor(np.asarray(labels), dtype=torch.long)
  size = model.config.sample_size
  gen = torch.Generator().manual_seed(seed)
  out = []
  with torch.inference_mode():
    for i in range(0, len(labels), batch_size):
      c = labels[i:i + batch_size]
      scheduler = make_sampler(sampler, steps)
      z = torch.randn(len(c), 1, size, size, generator=gen).to(device)
      for t in scheduler.timesteps:
        eps = guided_eps(model, z, t, c, w)
        kwargs = {"eta": 0.} if sampler == "ddim" else {}
        z = scheduler.step(eps, t, z, generator=gen, **kwargs).prev_sample
      out.append(to_uint8(z.permute(0, 2, 3, 1).cpu().numpy()))
  return np.concatenate(out) if out else np.zeros((0, size, size, 1), np.uint8)


class _Parser(argparse.ArgumentParser):
  """An ArgumentParser whose errors are one line on stderr (status 2), without the usage."""

  def error(self, message):
    self.exit(2, f"peer_quality: error: {message}\n")


def _floats(flag: str, text: str, parser: argparse.ArgumentParser) -> list[float]:
  """Comma-separated floats; a parser error naming flag otherwise."""
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    parser.error(f"{flag} must be comma-separated numbers, got {text!r}")
  if not values or not all(np.isfinite(values)):
    parser.error(f"{flag} must be one or more finite comma-separated numbers, got {text!r}")
  return values


def _npz(flag: str, path: str, keys: Sequence[str], parser: argparse.ArgumentParser) -> dict:
  """The arrays `keys` of the npz at path; a parser error naming flag otherwise."""
  if not os.path.isfile(path):
    parser.error(f"{flag}: no such file {path!r}")
  try:
    f = np.load(path)
  except (OSError, ValueError) as e:
    parser.error(f"{flag}: {path!r} is not an npz file ({e})")
  if not isinstance(f, np.lib.npyio.NpzFile):
    parser.error(f"{flag}: {path!r} is not an npz file")
  with f:
    missing = [k for k in keys if k not in f]
    if missing:
      parser.error(f"{flag}: {path!r} has no array {missing[0]!r} (needs {', '.join(keys)})")
    return {k: f[k] for k in keys}


def _check_labels(flag: str, labels: np.ndarray, parser: argparse.ArgumentParser) -> None:
  if labels.ndim != 1 or labels.dtype.kind not in "iu":
    parser.error(f"{flag}: 'label' must be int [N], got {labels.dtype} {labels.shape}")
  if labels.size and (labels.min() < 0 or labels.max() >= NUM_CLASSES):
    parser.error(f"{flag}: labels must lie in [0, {NUM_CLASSES})")


def main(argv: Sequence[str] | None = None) -> None:
  parser = _Parser(prog="python -m bench.peer_quality", description=__doc__.split("\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  tr = sub.add_parser("train", help="train for a wall-clock budget")
  tr.add_argument("--data", required=True, help="npz of x [N, S, S, 1] and label [N]")
  tr.add_argument("--minutes", required=True, type=float, help="wall-clock budget")
  tr.add_argument("--report_minutes", required=True, help="e.g. 15,45; the last = --minutes")
  tr.add_argument("--out", required=True, help="directory of checkpoints and train_log.json")
  tr.add_argument("--seed", type=int, default=0)
  sa = sub.add_parser("sample", help="guided samples at several w")
  sa.add_argument("--checkpoint", required=True, help="a minute_<m>.pt")
  sa.add_argument("--config", required=True, help="the train_log.json of the run")
  sa.add_argument("--labels", required=True, help="npz of label [N]")
  sa.add_argument("--ws", required=True, help="guidance weights, e.g. 0,0.5,1,2,3")
  sa.add_argument("--sampler", required=True, choices=SAMPLERS)
  sa.add_argument("--steps", type=int, default=50)
  sa.add_argument("--seed", type=int, default=0)
  sa.add_argument("--batch_size", type=int, default=500)
  sa.add_argument("--out", required=True, help="the npz written")
  args = parser.parse_args(argv)

  if args.command == "train":
    if not (args.minutes > 0 and np.isfinite(args.minutes)):
      parser.error(f"--minutes must be a positive number, got {args.minutes:g}")
    marks = _floats("--report_minutes", args.report_minutes, parser)
    if marks[0] <= 0 or any(b <= a for a, b in zip(marks, marks[1:])):
      parser.error(f"--report_minutes must be positive and increasing, got {args.report_minutes}")
    if marks[-1] != args.minutes:
      parser.error(f"--report_minutes must end at --minutes={args.minutes:g}, "
                   f"got {args.report_minutes}")
    data = _npz("--data", args.data, ("x", "label"), parser)
    x, labels = data["x"], data["label"]
    if (x.ndim != 4 or x.shape[3] != 1 or x.shape[1] != x.shape[2] or x.shape[1] % 4
        or x.dtype.kind != "f"):
      parser.error(f"--data: 'x' must be float [N, S, S, 1] with S divisible by 4, got "
                   f"{x.dtype} {x.shape}")
    _check_labels("--data", labels, parser)
    if len(labels) != len(x) or not len(x):
      parser.error(f"--data: 'x' and 'label' must hold the same N > 0 examples, "
                   f"got {len(x)} and {len(labels)}")
    log = train(x, labels, minutes=args.minutes, report_minutes=marks, out=args.out,
                seed=args.seed)
    print(json.dumps(log["reports"]), flush=True)
    return

  ws = _floats("--ws", args.ws, parser)
  if args.steps < 1:
    parser.error(f"--steps must be >= 1, got {args.steps}")
  if args.steps > NUM_TRAIN_TIMESTEPS:
    parser.error(f"--steps must be at most {NUM_TRAIN_TIMESTEPS}, got {args.steps}")
  if args.batch_size < 1:
    parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
  for flag, path in (("--checkpoint", args.checkpoint), ("--config", args.config)):
    if not os.path.isfile(path):
      parser.error(f"{flag}: no such file {path!r}")
  try:
    with open(args.config) as f:
      if not isinstance(json.load(f).get("model"), dict):
        raise ValueError("no 'model' object")
  except (ValueError, AttributeError) as e:
    parser.error(f"--config: {args.config!r} is not a train_log.json ({e})")
  labels = _npz("--labels", args.labels, ("label",), parser)["label"]
  _check_labels("--labels", labels, parser)
  model = load_model(args.checkpoint, args.config).to(
      "cuda" if torch.cuda.is_available() else "cpu")
  x = np.stack([sample(model, labels, w=w, sampler=args.sampler, steps=args.steps,
                       seed=args.seed, batch_size=args.batch_size) for w in ws])
  _write_atomic(args.out, lambda f: np.savez(f, x=x, ws=np.asarray(ws, np.float32),
                                               label=labels.astype(np.int64)))


if __name__ == "__main__":
  main(sys.argv[1:])
