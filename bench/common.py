"""What both benchmarks (bench.run, bench.accelerator) use: networks and train steps to
time, the timer, FLOP counts, the diffusers peer's spec, the machine, targets, flags, output.

A time is the fastest of `repeats` calls after one untimed call (which compiles): on a
shared machine the slower calls measure interference (timeit's advice).
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import pathlib
import platform
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cfg_jax import checks
from cfg_jax import config_lib
from cfg_jax import models
from cfg_jax import sampling
from cfg_jax import test_configs
from cfg_jax import train
from cfg_jax import xla_options

ROOT = pathlib.Path(__file__).resolve().parents[1]
W = 2.  # the guidance weight of every guided figure
SAMPLING_STEPS = 2  # T of the per-step sampling figures
QUALITY_STEPS = 50  # T of the sample-quality benchmarks (quality, ablation, guidance)


preset = config_lib.preset


def reduced64_config() -> ml_collections.ConfigDict:
  """configs/imagenet64.py (3 channels, 1,000 classes, ch_mult 1-2-3-4) at 1/6 the width,
  one residual block per level, attention at 16 and 8, float32: 4.8M parameters."""
  config = preset("imagenet64")
  config.model.update(ch=32, num_res_blocks=1, attn_resolutions=(16, 8), num_head_channels=32,
                      dtype="float32")
  return config


# The 0.35M-parameter UNet of the CPU speed figures: ch 16, attention at 16x16, residual
# resampling, 8 λ frequencies, dropout 0.1, ε-prediction (configs/mnist.py otherwise).
SMALL_UNET = {"ch": 16, "attn_resolutions": (16,), "num_head_channels": 32,
              "resblock_updown": True, "dropout": 0.1, "logsnr_emb_ch": 0}


def small_config() -> ml_collections.ConfigDict:
  """configs/mnist.py with the SMALL_UNET model and ε-prediction, on digits padded to
  32x32: 345,713 parameters."""
  config = with_model(preset("mnist"), **SMALL_UNET)
  config.diffusion.prediction = "eps"
  config.data.image_size = 32
  return config


def eval_classifier_config(quick: bool) -> ml_collections.ConfigDict | None:
  """The eval classifier of a quality benchmark: the preset's (None), or with --quick a
  tiny one that trains in seconds (the figures then check the code, not the model)."""
  return test_configs.tiny_eval_classifier(num_steps=30) if quick else None


def with_model(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of config with these config.model fields changed (e.g. dtype, remat)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(fields)
  return config


class Network:
  """A config's ε-network with initialized params, in the sampler's `apply_fn` form."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.model = models.create_model(config)
    self.params = models.init_params(self.model, jax.random.PRNGKey(0), config)
    self.apply_fn = models.make_apply_fn(self.model)
    self.shape = config_lib.example_shape(config)
    self.num_classes = config.data.num_classes
    self.num_params = models.count_params(self.params)

  def labels(self, batch_size: int) -> jax.Array:
    return jnp.arange(batch_size, dtype=jnp.int32) % self.num_classes

  def sample_fn(self, num_steps: int, *, two_pass: bool = False, **options) -> Callable:
    apply_fn = two_pass_apply(self.apply_fn) if two_pass else self.apply_fn
    return sampling.make_sample_fn(apply_fn, shape=self.shape, num_steps=num_steps,
                                   null_label=self.num_classes, v=self.config.sampling.v,
                                   **options)


def two_pass_apply(apply_fn: Callable) -> Callable:
  """apply_fn on the doubled batch [z; z] as two calls on its halves: guidance in two passes."""
  def apply(params, z, logsnr, labels):
    half = z.shape[0] // 2
    return jnp.concatenate([apply_fn(params, z[:half], logsnr[:half], labels[:half]),
                            apply_fn(params, z[half:], logsnr[half:], labels[half:])])
  return apply


def timed(fn: Callable[[], Any], repeats: int) -> float:
  """The fastest seconds of fn() (waited for) over `repeats` calls, after one untimed call."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def bench_sampling(net: Network, batch_sizes, repeats: int) -> dict[str, Any]:
  """Seconds per step: unguided (w=None), guided in one pass, guided in two passes."""
  out = {}
  for b in batch_sizes:
    labels, rng = net.labels(b), jax.random.PRNGKey(1)
    row = {}
    for mode, two_pass, w in (("unguided", False, None), ("guided", False, W),
                              ("two_pass", True, W)):
      sample_fn = net.sample_fn(SAMPLING_STEPS, two_pass=two_pass)
      row[mode] = timed(lambda: sample_fn(net.params, rng, labels, w), repeats) / SAMPLING_STEPS
    row["guided/unguided"] = row["guided"] / row["unguided"]
    row["guided/two_pass"] = row["guided"] / row["two_pass"]
    out[str(b)] = row
  return out


class TrainStep:
  """A config's train step jitted as cfg_jax.train jits it (the state donated: params and
  EMA params are two buffers), compiled once per batch size, and a fixed random batch."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    model = models.create_model(config)
    tx, schedule = train.create_optimizer(config)
    self.init_state = jax.jit(functools.partial(train.create_train_state, config, model, tx))
    self._step = xla_options.jit(functools.partial(train.train_step, model=model, tx=tx,
                                                   schedule=schedule, config=config),
                                 donate_argnums=(0,))
    self._compiled = {}

  def compiled_batches(self) -> list[int]:
    return list(self._compiled)

  def batch(self, batch_size: int) -> dict[str, jax.Array]:
    rng = np.random.default_rng(0)
    shape = (batch_size,) + config_lib.example_shape(self.config)
    return {"x": jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32),
            "label": jnp.asarray(rng.integers(0, self.config.data.num_classes, batch_size),
                                 jnp.int32)}

  def lower(self, batch_size: int) -> jax.stages.Lowered:
    """The step lowered for abstract state and batch: nothing is allocated."""
    return self._step.lower(jax.eval_shape(self.init_state),
                            jax.eval_shape(lambda: self.batch(batch_size)))

  def compiled(self, batch_size: int) -> jax.stages.Compiled:
    if batch_size not in self._compiled:
      self._compiled[batch_size] = self.lower(batch_size).compile()
    return self._compiled[batch_size]

  def run_once(self, batch_size: int) -> None:
    """One step on a fresh state, waited for (raises what the device raises)."""
    jax.block_until_ready(self.compiled(batch_size)(self.init_state(), self.batch(batch_size)))

  def seconds(self, batch_size: int, repeats: int) -> float:
    """The fastest seconds of a step (see `timed`), the state carried from step to step."""
    step, batch = self.compiled(batch_size), self.batch(batch_size)
    state = [self.init_state()]

    def run():
      state[0], metrics = step(state[0], batch)
      return metrics["loss"]

    return timed(run, repeats)


def matmul_peak(sizes, repeats: int, dtype: Any = jnp.float32) -> dict[str, float]:
  """The best FLOP/s of a jitted n x n matmul in `dtype` over the sizes: the machine's peak."""
  out = {}
  matmul = jax.jit(jnp.matmul)
  for n in sizes:
    a, b = (jax.random.normal(jax.random.PRNGKey(i), (n, n), dtype) for i in range(2))
    out[str(n)] = 2 * n ** 3 / timed(lambda: matmul(a, b), repeats)
  return {"per_size": out, "peak": max(out.values())}


def flops(stage: jax.stages.Lowered | jax.stages.Compiled) -> float:
  """XLA's FLOP count of a lowered (before optimization) or compiled program."""
  cost = stage.cost_analysis()
  return float((cost[0] if isinstance(cost, (list, tuple)) else cost)["flops"])


def peer_unet(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """The arguments of `peer_diffusers.build_unet` for the UNet of config."""
  m, d = config.model, config.data
  return dict(ch=m.ch, ch_mult=list(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=list(m.attn_resolutions), num_head_channels=m.num_head_channels,
              image_size=d.image_size, channels=d.channels, num_classes=d.num_classes,
              dropout=m.dropout, resblock_updown=m.resblock_updown)


def peer_spec(config: ml_collections.ConfigDict, sampling_batches, train_batch: int,
              repeats: int) -> dict[str, Any]:
  """What `peer_diffusers.measure` times: the UNet of config, the same batches, its dtype."""
  return {"unet": peer_unet(config), "sampling_batches": list(sampling_batches),
          "train_batch": train_batch, "repeats": repeats, "dtype": config.model.dtype}


def machine() -> dict[str, Any]:
  """The host, jax, its devices and XLA options, and the date: the context of every figure."""
  cpu = platform.processor()
  try:
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "jax": jax.__version__, "backend": jax.default_backend(),
          "devices": jax.device_count(), "device_kind": jax.devices()[0].device_kind,
          "xla_options": xla_options.compiler_options(),
          "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def judge(figures: dict[str, float], bounds: dict[str, tuple[str, float]]
          ) -> dict[str, dict[str, Any]]:
  """Each figure (the worst measured) against its (comparison, bound) in `bounds`."""
  out = {}
  for name, value in figures.items():
    comparison, bound = bounds[name]
    out[name] = {"worst": value, "bound": bound, "comparison": comparison,
                 "met": value >= bound if comparison == ">=" else value <= bound}
  return out


def targets_table(targets: dict[str, dict[str, Any]]) -> list[str]:
  """The markdown table of `judge`'s targets; a target naming a preset shows it."""
  lines = ["| target | measured | bound | met |", "|---|---|---|---|"]
  for name, t in targets.items():
    label = f"{name} ({t['preset']})" if "preset" in t else name
    lines.append(f"| {label} | {t['worst']:.2f} | {t['comparison']} {t['bound']:g} | "
                 f"{'yes' if t['met'] else 'NO'} |")
  return lines


def progress(what: str) -> None:
  """A time-stamped line saying what is measured next."""
  print(f"[bench {time.strftime('%H:%M:%S')}] {what}", flush=True)


def ms(seconds: float) -> str:
  """Seconds as milliseconds, for the tables."""
  return f"{1e3 * seconds:,.1f} ms"


def arg_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
  """The flags of every bench command: --quick, --repeats, --out."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per figure (default 5, or 2 with --quick)")
  parser.add_argument("--out", default=None, help="also write the JSON to this file")
  return parser


def repeats_flag(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  """--repeats, or its default; an error unless it is at least 1."""
  repeats = args.repeats or (2 if args.quick else 5)
  if repeats < 1:
    parser.error(f"--repeats must be >= 1, got {repeats}.")
  return repeats


def guidance_interval_flag(parser: argparse.ArgumentParser,
                           text: str | None) -> tuple[float, ...] | None:
  """--guidance_interval's text: "lo,hi" as (lo, hi), "" as () (every step), None (not
  given) as None; a parser error naming the flag otherwise (the sampler's own rule)."""
  if text is None:
    return None
  try:
    interval = tuple(float(b) for b in text.split(",") if b.strip())
    checks.check("--guidance_interval", interval, sampling.OPTION_RULES["guidance_interval"])
  except ValueError as e:
    parser.error(f"--guidance_interval must be lo,hi with lo <= hi, or empty to guide every "
                 f"step, got {text!r} ({e})")
  return interval


def emit(results: dict[str, Any], text: str, out: str | None) -> None:
  """Prints the tables and the line `BENCH_JSON {...}`; writes the JSON to `out` too."""
  print(text)
  line = json.dumps(results)
  print("BENCH_JSON " + line)
  if out:
    pathlib.Path(out).write_text(line + "\n")
