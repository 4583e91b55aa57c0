r"""The cfg_jax benchmark: guided sampling, training, compile time, FLOP/s, memory, diffusers.

    pip install -e ".[bench]"     # adds torch 2.13.0 (CPU) and diffusers, for the peer
    python -m bench.run           # the full run (about half an hour on 2 CPU cores)
    python -m bench.run --quick   # the toy2d MLP, a minute: checks that the code runs

(`python -m bench.accelerator` measures the bfloat16 ImageNet presets on a GPU or TPU.)
The peer runs on a CUDA GPU when torch has one, else on the CPU.

Everything runs in ONE process, one measurement after another, so that every ratio
compares two figures taken on the same machine in the same state. The output is a
markdown table per section, the targets met or missed, and one line `BENCH_JSON {...}`
holding every figure (also written to --out).

A time is the fastest of --repeats calls after one untimed call (which compiles): on a
shared machine the slower calls measure interference (timeit's advice). A sampling time
is per step: one call of a T-step sampler divided by T. Compile times are measured with
jax's persistent compilation cache off.
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

from cfg_jax import config_lib
from cfg_jax import models
from cfg_jax import sampling
from cfg_jax import schedules
from cfg_jax import train
from cfg_jax import xla_options

ROOT = pathlib.Path(__file__).resolve().parents[1]
W = 2.  # the guidance weight of every guided figure
SAMPLING_STEPS = 2  # T of the per-step sampling figures
LOOP_STEPS = 32  # T of scan vs Python loop
COMPILE_STEPS = (16, 256, 1024)
TARGETS = {  # name: (figure, bound), met when figure <= bound
    "guided batched / unguided": 2.0, "guided batched / two-pass": 1.0,
    "scan / Python loop": 1.0, "compile, largest T / T=16": 1.5,
    "ours / diffusers, guided sampling step": 1.0, "ours / diffusers, training step": 1.0}


def mnist_config() -> ml_collections.ConfigDict:
  return config_lib.load_config_file(ROOT / "configs" / "mnist.py")


def reduced64_config() -> ml_collections.ConfigDict:
  """configs/imagenet64.py (3 channels, 1,000 classes, ch_mult 1-2-3-4) at 1/6 the width,
  one residual block per level, attention at 16 and 8, float32: 4.8M parameters."""
  config = config_lib.load_config_file(ROOT / "configs" / "imagenet64.py")
  config.model.update(ch=32, num_res_blocks=1, attn_resolutions=(16, 8), num_head_channels=32,
                      dtype="float32")
  return config


def toy2d_config() -> ml_collections.ConfigDict:
  """--quick: the toy2d MLP, which compiles in seconds; its figures only show the code runs."""
  return config_lib.load_config_file(ROOT / "configs" / "toy2d.py")


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
    apply_fn = _two_pass(self.apply_fn) if two_pass else self.apply_fn
    return sampling.make_sample_fn(apply_fn, shape=self.shape, num_steps=num_steps,
                                   null_label=self.num_classes, v=self.config.sampling.v,
                                   **options)


def _two_pass(apply_fn: Callable) -> Callable:
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


def bench_guidance_interval(net: Network, batch_size: int, repeats: int) -> dict[str, Any]:
  """Seconds per step when only the middle half of the T steps is guided."""
  num_steps = 4 * SAMPLING_STEPS
  logsnrs = np.asarray(schedules.sampling_logsnrs(num_steps))
  interval = (float(logsnrs[num_steps // 4]), float(logsnrs[3 * num_steps // 4 - 1]))
  sample_fn = net.sample_fn(num_steps, guidance_interval=interval)
  labels, rng = net.labels(batch_size), jax.random.PRNGKey(1)
  seconds = timed(lambda: sample_fn(net.params, rng, labels, W), repeats) / num_steps
  return {"batch_size": batch_size, "interval": interval, "guided_fraction": 0.5,
          "seconds_per_step": seconds}


def bench_scan_vs_loop(net: Network, batch_sizes, repeats: int) -> dict[str, Any]:
  """Seconds per guided step: the jitted lax.scan against a Python loop of a jitted step."""
  out = {}
  sample_fn = net.sample_fn(LOOP_STEPS)
  for b in batch_sizes:
    labels, rng = net.labels(b), jax.random.PRNGKey(1)
    scan = timed(lambda: sample_fn(net.params, rng, labels, W), repeats) / LOOP_STEPS
    loop = timed(lambda: sample_fn.loop(net.params, rng, labels, W), repeats) / LOOP_STEPS
    out[str(b)] = {"scan": scan, "loop": loop, "scan/loop": scan / loop}
  return out


def bench_compile(net: Network, steps, batch_size: int) -> dict[str, float]:
  """Seconds to trace, lower and compile the guided sampler for each T (best of two)."""
  labels, rng = net.labels(batch_size), jax.random.PRNGKey(1)
  out = {}
  for num_steps in steps:
    seconds = []
    for _ in range(2):  # a new sample_fn each time: nothing is reused
      sample_fn = net.sample_fn(num_steps)
      start = time.perf_counter()
      sample_fn.lower(net.params, rng, labels, W).compile()
      seconds.append(time.perf_counter() - start)
    out[str(num_steps)] = min(seconds)
  return out


def with_model(config: ml_collections.ConfigDict, **fields) -> ml_collections.ConfigDict:
  """A copy of config with these config.model fields changed (e.g. dtype, remat)."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.update(fields)
  return config


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


def bench_training(config: ml_collections.ConfigDict, batch_size: int,
                   repeats: int) -> dict[str, float]:
  """Images/s of the jitted train step (state donated) on a fixed random batch."""
  seconds = TrainStep(config).seconds(batch_size, repeats)
  return {"seconds_per_step": seconds, "images_per_sec": batch_size / seconds}


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


def bench_forward_flops(net: Network, batch_size: int, repeats: int, peak: float
                        ) -> dict[str, Any]:
  """Achieved FLOP/s of the network's forward pass (XLA's FLOP count / time) and its % of
  peak, compiled with cfg_jax's XLA options and with XLA's defaults."""
  z = jnp.zeros((batch_size,) + net.shape, jnp.float32)
  logsnr, labels = jnp.zeros((batch_size,), jnp.float32), net.labels(batch_size)
  out = {"batch_size": batch_size}
  for name, options in (("ours", xla_options.compiler_options()), ("xla_defaults", {})):
    compiled = jax.jit(net.apply_fn, compiler_options=options).lower(
        net.params, z, logsnr, labels).compile()
    count = flops(compiled)
    seconds = timed(lambda: compiled(net.params, z, logsnr, labels), repeats)  # pylint: disable=cell-var-from-loop
    out[name] = {"flops": count, "seconds": seconds, "flops_per_sec": count / seconds,
                 "percent_of_peak": 100 * count / seconds / peak}
  return out


def sampling_memory(net: Network, batch_size: int) -> dict[str, float]:
  """XLA's peak memory (bytes) of the T-step guided sampler for batch_size images."""
  labels, rng = net.labels(batch_size), jax.random.PRNGKey(1)
  out = {"params": 4. * net.num_params}
  for mode, two_pass in (("guided", False), ("two_pass", True)):
    compiled = net.sample_fn(256, two_pass=two_pass).lower(net.params, rng, labels, W).compile()
    out[mode] = float(compiled.memory_analysis().peak_memory_in_bytes)
  return out


def peer_spec(config: ml_collections.ConfigDict, sampling_batches, train_batch: int,
              repeats: int) -> dict[str, Any]:
  """What `peer_diffusers.measure` times: the UNet of config, the same batches, its dtype."""
  m, d = config.model, config.data
  unet = dict(ch=m.ch, ch_mult=list(m.ch_mult), num_res_blocks=m.num_res_blocks,
              attn_resolutions=list(m.attn_resolutions), num_head_channels=m.num_head_channels,
              image_size=d.image_size, channels=d.channels, num_classes=d.num_classes,
              dropout=m.dropout, resblock_updown=m.resblock_updown)
  return {"unet": unet, "sampling_batches": list(sampling_batches), "train_batch": train_batch,
          "repeats": repeats, "dtype": m.dtype}


def bench_peer(config: ml_collections.ConfigDict, batch_sizes, train_batch: int,
               repeats: int) -> dict[str, Any]:
  """The same work in diffusers' UNet2DModel on torch (on a CUDA GPU if torch has one, else
  the CPU); {"skipped": why} without them."""
  if config.model.name != "unet":
    return {"skipped": f"the peer is a UNet; this preset's model is {config.model.name!r}"}
  try:
    from bench import peer_diffusers  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return {"skipped": f"{e} (pip install -e '.[bench]')"}
  return peer_diffusers.measure(peer_spec(config, batch_sizes, train_batch, repeats))


def machine() -> dict[str, Any]:
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


def run(quick: bool, repeats: int) -> dict[str, Any]:
  """Every measurement, in order; returns the nested dict of figures."""
  jax.config.update("jax_enable_compilation_cache", False)
  batch_sizes = (1, 4) if quick else (1, 16, 64)
  presets = {"toy2d": toy2d_config()} if quick else {"mnist": mnist_config(),
                                                  "reduced64": reduced64_config()}
  first = next(iter(presets))
  nets = {name: Network(config) for name, config in presets.items()}
  big = batch_sizes[-1]
  results = {"machine": machine(), "quick": quick, "repeats": repeats, "w": W,
             "num_params": {name: net.num_params for name, net in nets.items()}}
  progress("sampling per step")
  results["sampling"] = {name: bench_sampling(net, batch_sizes, repeats)
                         for name, net in nets.items()}
  results["guidance_interval"] = bench_guidance_interval(nets[first], big, repeats)
  progress("scan vs Python loop, compile time")
  results["scan_vs_loop"] = bench_scan_vs_loop(nets[first], batch_sizes[:2], repeats)
  results["compile"] = bench_compile(nets[first], COMPILE_STEPS[:2] if quick else COMPILE_STEPS,
                                     batch_size=batch_sizes[1])
  progress("training")
  results["training"] = {dtype: bench_training(with_model(presets[first], dtype=dtype), big,
                                               repeats)
                         for dtype in ("float32", "bfloat16")}
  progress("FLOP/s and memory")
  peak = matmul_peak((256, 512) if quick else (1024, 2048, 4096), repeats)
  results["matmul"] = peak
  results["forward"] = {name: bench_forward_flops(net, 2 * big, repeats, peak["peak"])
                        for name, net in nets.items()}
  results["memory"] = {name: sampling_memory(net, big) for name, net in nets.items()}
  progress("diffusers peer")
  results["peer"] = bench_peer(presets[first], batch_sizes, big, repeats)
  results["targets"] = targets(results, first)
  return results


def targets(results: dict[str, Any], preset: str) -> dict[str, dict[str, Any]]:
  """Each target of TARGETS with the worst measured figure."""
  sampling_rows = [row for p in results["sampling"].values() for row in p.values()]
  compile_times = list(results["compile"].values())
  figures = {
      "guided batched / unguided": max(r["guided/unguided"] for r in sampling_rows),
      "guided batched / two-pass": max(r["guided/two_pass"] for r in sampling_rows),
      "scan / Python loop": max(r["scan/loop"] for r in results["scan_vs_loop"].values()),
      "compile, largest T / T=16": compile_times[-1] / compile_times[0]}
  peer = results["peer"]
  if "skipped" not in peer:
    ours = results["sampling"][preset]
    figures["ours / diffusers, guided sampling step"] = max(
        ours[b]["guided"] / peer["sampling"][b]["guided"] for b in peer["sampling"])
    figures["ours / diffusers, training step"] = (
        results["training"]["float32"]["seconds_per_step"]
        / peer["training"]["seconds_per_step"])
  return {name: {"worst": value, "bound": TARGETS[name], "met": value <= TARGETS[name]}
          for name, value in figures.items()}


def progress(what: str) -> None:
  print(f"[bench {time.strftime('%H:%M:%S')}] {what}", flush=True)


def _ms(seconds: float) -> str:
  return f"{1e3 * seconds:,.1f} ms"


def report(results: dict[str, Any]) -> str:
  """The markdown tables of the results."""
  m = results["machine"]
  lines = [f"Machine: {m['cpu']}, {m['cores']} cores, jax {m['jax']} ({m['backend']}, "
           f"{m['devices']} device(s): {m['device_kind']}), Python {m['python']}, "
           f"{m['date']}; fastest of "
           f"{results['repeats']} calls; w = {results['w']:g}; XLA options "
           f"{m['xla_options']}.", ""]
  lines += ["### Sampling, per step", "",
            "| preset (params) | batch | unguided | guided, 1 pass | guided, 2 passes | "
            "guided / unguided | 1 pass / 2 passes |", "|---|---|---|---|---|---|---|"]
  for preset, rows in results["sampling"].items():
    for b, r in rows.items():
      lines.append(f"| {preset} ({results['num_params'][preset]:,}) | {b} | {_ms(r['unguided'])} "
                   f"| {_ms(r['guided'])} | {_ms(r['two_pass'])} | {r['guided/unguided']:.2f} "
                   f"| {r['guided/two_pass']:.2f} |")
  gi = results["guidance_interval"]
  lines += ["", f"Guidance interval λ ∈ [{gi['interval'][0]:.2f}, {gi['interval'][1]:.2f}] "
            f"(half of {4 * SAMPLING_STEPS} steps guided), batch {gi['batch_size']}: "
            f"{_ms(gi['seconds_per_step'])} per step.", ""]
  lines += ["### lax.scan against a Python loop of a jitted step (guided, per step)", "",
            "| batch | scan | Python loop | scan / loop |", "|---|---|---|---|"]
  for b, r in results["scan_vs_loop"].items():
    lines.append(f"| {b} | {_ms(r['scan'])} | {_ms(r['loop'])} | {r['scan/loop']:.2f} |")
  lines += ["", "| T | " + " | ".join(results["compile"]) + " |",
            "|---|" + "---|" * len(results["compile"]),
            "| compile (s) | " + " | ".join(f"{s:.1f}" for s in results["compile"].values())
            + " |", ""]
  lines += ["### Training step (first preset)", "", "| compute dtype | step | images/s |",
            "|---|---|---|"]
  for dtype, r in results["training"].items():
    lines.append(f"| {dtype} | {_ms(r['seconds_per_step'])} | {r['images_per_sec']:.1f} |")
  mm = results["matmul"]
  lines += ["", f"### FLOP/s (matmul peak {mm['peak'] / 1e9:.1f} GFLOP/s, float32)", "",
            "| preset | forward batch | XLA options | GFLOP | time | GFLOP/s | % of peak |",
            "|---|---|---|---|---|---|---|"]
  for preset, rows in results["forward"].items():
    for name in ("ours", "xla_defaults"):
      r = rows[name]
      lines.append(f"| {preset} | {rows['batch_size']} | {name} | {r['flops'] / 1e9:.2f} | "
                   f"{_ms(r['seconds'])} | {r['flops_per_sec'] / 1e9:.1f} | "
                   f"{r['percent_of_peak']:.0f}% |")
  lines += ["", "### Peak memory of the 256-step guided sampler (XLA buffer assignment)", "",
            "| preset | params | 1 pass | 2 passes |", "|---|---|---|---|"]
  for preset, r in results["memory"].items():
    lines.append(f"| {preset} | {r['params'] / 2**20:.1f} MiB | {r['guided'] / 2**20:.1f} MiB "
                 f"| {r['two_pass'] / 2**20:.1f} MiB |")
  peer = results["peer"]
  if "skipped" in peer:
    lines += ["", "### diffusers UNet2DModel, same architecture", "",
              f"Skipped: {peer['skipped']}"]
  else:
    lines += ["", f"### diffusers UNet2DModel (torch, {peer['device_name']}), same "
              f"architecture", ""]
    first = next(iter(results["sampling"]))
    ours = results["sampling"][first]
    v = peer["versions"]
    lines += [f"torch {v['torch']}, diffusers {v['diffusers']}, {peer['num_params']:,} "
              f"parameters (ours {results['num_params'][first]:,}).", "",
              "| work | ours | diffusers | ours / diffusers |", "|---|---|---|---|"]
    for b, r in peer["sampling"].items():
      for mode in ("unguided", "guided"):
        lines.append(f"| {mode} sampling step, batch {b} | {_ms(ours[b][mode])} | "
                     f"{_ms(r[mode])} | {ours[b][mode] / r[mode]:.2f} |")
    t_ours = results["training"]["float32"]["seconds_per_step"]
    t_peer = peer["training"]["seconds_per_step"]
    lines.append(f"| training step, float32 | {_ms(t_ours)} | {_ms(t_peer)} | "
                 f"{t_ours / t_peer:.2f} |")
  lines += ["", "### Targets (worst case over the rows above)", "",
            "| target | measured | bound | met |", "|---|---|---|---|"]
  for name, t in results["targets"].items():
    lines.append(f"| {name} | {t['worst']:.2f} | <= {t['bound']:g} | "
                 f"{'yes' if t['met'] else 'NO'} |")
  return "\n".join(lines)


def arg_parser(description: str, quick_help: str) -> argparse.ArgumentParser:
  """The flags of every bench command: --quick, --repeats, --out."""
  parser = argparse.ArgumentParser(description=description)
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--repeats", type=int, default=None,
                      help="timed calls per figure (default 5, or 2 with --quick)")
  parser.add_argument("--out", default=None, help="also write the JSON to this file")
  return parser


def repeats_flag(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
  repeats = args.repeats or (2 if args.quick else 5)
  if repeats < 1:
    parser.error(f"--repeats must be >= 1, got {repeats}.")
  return repeats


def emit(results: dict[str, Any], text: str, out: str | None) -> None:
  """Prints the tables and the line `BENCH_JSON {...}`; writes the JSON to `out` too."""
  print(text)
  line = json.dumps(results)
  print("BENCH_JSON " + line)
  if out:
    pathlib.Path(out).write_text(line + "\n")


def main() -> None:
  parser = arg_parser(__doc__.splitlines()[0],
                      "the toy2d MLP and few sizes: checks that the benchmark runs")
  args = parser.parse_args()
  results = run(args.quick, repeats_flag(parser, args))
  emit(results, report(results), args.out)


if __name__ == "__main__":
  main()
