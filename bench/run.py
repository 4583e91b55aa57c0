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

A time is the fastest of --repeats calls after one untimed call (`common.timed`). A
sampling time is per step: one call of a T-step sampler divided by T. Compile times are
measured with jax's persistent compilation cache off.
"""
from __future__ import annotations

import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from bench import common
from cfg_jax import guidance
from cfg_jax import schedules
from cfg_jax import xla_options

LOOP_STEPS = 32  # T of scan vs Python loop
COMPILE_STEPS = (16, 256, 1024)
RULE_STEPS = 16  # T of the guidance rules' per-step figures (DDIM)
# Each rule of cfg_jax.guidance (APG with all of its work: clipping and momentum), a w
# schedule, and autoguidance by a guide of the same architecture (one call) or another
# (two calls).
RULE_OPTIONS = {
    **{name: dict(guidance=name) for name in guidance.RULES if name != "cfg"},
    "apg": dict(guidance="apg", guidance_params={"eta": 0., "norm_threshold": 1.,
                                                 "momentum": -0.5}),
    "cfg, w cosine": dict(w_schedule="cosine"),
    "autoguidance, one call": dict(guide="same"),
    "autoguidance, two calls": dict(guide="other"),
}
TARGETS = {  # name: (comparison, bound) of the worst figure
    "guided batched / unguided": ("<=", 2.0), "guided batched / two-pass": ("<=", 1.0),
    "any rule / CFG, guided step": ("<=", 1.05), "compile, largest T / T=16, APG": ("<=", 1.5),
    "scan / Python loop": ("<=", 1.0), "compile, largest T / T=16": ("<=", 1.5),
    "ours / diffusers, guided sampling step": ("<=", 1.0),
    "ours / diffusers, training step": ("<=", 1.0)}


def bench_guidance_interval(net: common.Network, batch_size: int, repeats: int
                            ) -> dict[str, Any]:
  """Seconds per step when only the middle half of the T steps is guided."""
  num_steps = 4 * common.SAMPLING_STEPS
  logsnrs = np.asarray(schedules.sampling_logsnrs(num_steps))
  interval = (float(logsnrs[num_steps // 4]), float(logsnrs[3 * num_steps // 4 - 1]))
  sample_fn = net.sample_fn(num_steps, guidance_interval=interval)
  labels, rng = net.labels(batch_size), jax.random.PRNGKey(1)
  seconds = common.timed(lambda: sample_fn(net.params, rng, labels, common.W),
                         repeats) / num_steps
  return {"batch_size": batch_size, "interval": interval, "guided_fraction": 0.5,
          "seconds_per_step": seconds}


def bench_scan_vs_loop(net: common.Network, batch_sizes, repeats: int) -> dict[str, Any]:
  """Seconds per guided step: the jitted lax.scan against a Python loop of a jitted step."""
  out = {}
  sample_fn = net.sample_fn(LOOP_STEPS)
  for b in batch_sizes:
    labels, rng = net.labels(b), jax.random.PRNGKey(1)
    scan = common.timed(lambda: sample_fn(net.params, rng, labels, common.W), repeats)
    loop = common.timed(lambda: sample_fn.loop(net.params, rng, labels, common.W), repeats)
    scan, loop = scan / LOOP_STEPS, loop / LOOP_STEPS
    out[str(b)] = {"scan": scan, "loop": loop, "scan/loop": scan / loop}
  return out


def bench_rules(net: common.Network, batch_size: int, repeats: int) -> dict[str, Any]:
  """Seconds per guided DDIM step of CFG and of each of RULE_OPTIONS, and each / CFG's."""
  labels, rng = net.labels(batch_size), jax.random.PRNGKey(1)
  other = lambda params, z, logsnr, labels: net.apply_fn(params, z, logsnr, labels)
  out = {"batch_size": batch_size, "steps": RULE_STEPS}
  for name, options in {"cfg": {}, **RULE_OPTIONS}.items():
    options = dict(options)
    guide = options.pop("guide", None)
    kwargs = {}
    if guide is not None:
      options["guide_fn"] = net.apply_fn if guide == "same" else other
      kwargs["guide_params"] = net.params
    sample_fn = net.sample_fn(RULE_STEPS, sampler="ddim", **options)
    call = lambda: sample_fn(net.params, rng, labels, common.W, **kwargs)  # pylint: disable=cell-var-from-loop
    seconds = common.timed(call, repeats) / RULE_STEPS
    out[name] = {"seconds_per_step": seconds, "/cfg": seconds / out["cfg"]["seconds_per_step"]
                 if name != "cfg" else 1.}
  return out


def bench_compile(net: common.Network, steps, batch_size: int, **options) -> dict[str, float]:
  """Seconds to trace, lower and compile the guided sampler (with `options`) for each T
  (best of two)."""
  labels, rng = net.labels(batch_size), jax.random.PRNGKey(1)
  out = {}
  for num_steps in steps:
    seconds = []
    for _ in range(2):  # a new sample_fn each time: nothing is reused
      sample_fn = net.sample_fn(num_steps, **options)
      start = time.perf_counter()
      sample_fn.lower(net.params, rng, labels, common.W).compile()
      seconds.append(time.perf_counter() - start)
    out[str(num_steps)] = min(seconds)
  return out


def bench_training(config: ml_collections.ConfigDict, batch_size: int,
                   repeats: int) -> dict[str, float]:
  """Images/s of the jitted train step (state donated) on a fixed random batch."""
  seconds = common.TrainStep(config).seconds(batch_size, repeats)
  return {"seconds_per_step": seconds, "images_per_sec": batch_size / seconds}


def bench_forward_flops(net: common.Network, batch_size: int, repeats: int, peak: float
                        ) -> dict[str, Any]:
  """Achieved FLOP/s of the network's forward pass (XLA's FLOP count / time) and its % of
  peak, compiled with cfg_jax's XLA options and with XLA's defaults."""
  z = jnp.zeros((batch_size,) + net.shape, jnp.float32)
  logsnr, labels = jnp.zeros((batch_size,), jnp.float32), net.labels(batch_size)
  out = {"batch_size": batch_size}
  for name, options in (("ours", xla_options.compiler_options()), ("xla_defaults", {})):
    compiled = jax.jit(net.apply_fn, compiler_options=options).lower(
        net.params, z, logsnr, labels).compile()
    count = common.flops(compiled)
    seconds = common.timed(lambda: compiled(net.params, z, logsnr, labels), repeats)  # pylint: disable=cell-var-from-loop
    out[name] = {"flops": count, "seconds": seconds, "flops_per_sec": count / seconds,
                 "percent_of_peak": 100 * count / seconds / peak}
  return out


def sampling_memory(net: common.Network, batch_size: int) -> dict[str, float]:
  """XLA's peak memory (bytes) of the T-step guided sampler for batch_size images."""
  labels, rng = net.labels(batch_size), jax.random.PRNGKey(1)
  out = {"params": 4. * net.num_params}
  for mode, two_pass in (("guided", False), ("two_pass", True)):
    compiled = net.sample_fn(256, two_pass=two_pass).lower(net.params, rng, labels,
                                                            common.W).compile()
    out[mode] = float(compiled.memory_analysis().peak_memory_in_bytes)
  return out


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
  return peer_diffusers.measure(common.peer_spec(config, batch_sizes, train_batch, repeats))


def run(quick: bool, repeats: int) -> dict[str, Any]:
  """Every measurement, in order; returns the nested dict of figures."""
  jax.config.update("jax_enable_compilation_cache", False)
  batch_sizes = (1, 4) if quick else (1, 16, 64)
  presets = ({"toy2d": common.preset("toy2d")} if quick
             else {"small": common.small_config(), "reduced64": common.reduced64_config()})
  first = next(iter(presets))
  nets = {name: common.Network(config) for name, config in presets.items()}
  big = batch_sizes[-1]
  results = {"machine": common.machine(), "quick": quick, "repeats": repeats, "w": common.W,
             "num_params": {name: net.num_params for name, net in nets.items()}}
  common.progress("sampling per step")
  results["sampling"] = {name: common.bench_sampling(net, batch_sizes, repeats)
                         for name, net in nets.items()}
  results["guidance_interval"] = bench_guidance_interval(nets[first], big, repeats)
  common.progress("scan vs Python loop, compile time")
  results["scan_vs_loop"] = bench_scan_vs_loop(nets[first], batch_sizes[:2], repeats)
  compile_steps = COMPILE_STEPS[:2] if quick else COMPILE_STEPS
  results["compile"] = bench_compile(nets[first], compile_steps, batch_size=batch_sizes[1])
  results["compile_apg"] = bench_compile(nets[first], compile_steps, batch_size=batch_sizes[1],
                                         **RULE_OPTIONS["apg"])
  common.progress("guidance rules")
  results["rules"] = bench_rules(nets[first], big, repeats)
  common.progress("training")
  results["training"] = {
      dtype: bench_training(common.with_model(presets[first], dtype=dtype), big, repeats)
      for dtype in ("float32", "bfloat16")}
  common.progress("FLOP/s and memory")
  peak = common.matmul_peak((256, 512) if quick else (1024, 2048, 4096), repeats)
  results["matmul"] = peak
  results["forward"] = {name: bench_forward_flops(net, 2 * big, repeats, peak["peak"])
                        for name, net in nets.items()}
  results["memory"] = {name: sampling_memory(net, big) for name, net in nets.items()}
  common.progress("diffusers peer")
  results["peer"] = bench_peer(presets[first], batch_sizes, big, repeats)
  results["targets"] = targets(results, first)
  return results


def targets(results: dict[str, Any], preset: str) -> dict[str, dict[str, Any]]:
  """Each target of TARGETS with the worst measured figure (`common.judge`)."""
  sampling_rows = [row for p in results["sampling"].values() for row in p.values()]
  compile_times = list(results["compile"].values())
  figures = {
      "guided batched / unguided": max(r["guided/unguided"] for r in sampling_rows),
      "guided batched / two-pass": max(r["guided/two_pass"] for r in sampling_rows),
      "scan / Python loop": max(r["scan/loop"] for r in results["scan_vs_loop"].values()),
      "compile, largest T / T=16": compile_times[-1] / compile_times[0],
      "any rule / CFG, guided step": max(r["/cfg"] for name, r in results["rules"].items()
                                         if name not in ("batch_size", "steps")),
      "compile, largest T / T=16, APG": (list(results["compile_apg"].values())[-1]
                                         / list(results["compile_apg"].values())[0])}
  peer = results["peer"]
  if "skipped" not in peer:
    ours = results["sampling"][preset]
    figures["ours / diffusers, guided sampling step"] = max(
        ours[b]["guided"] / peer["sampling"][b]["guided"] for b in peer["sampling"])
    figures["ours / diffusers, training step"] = (
        results["training"]["float32"]["seconds_per_step"]
        / peer["training"]["seconds_per_step"])
  return common.judge(figures, TARGETS)


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
      lines.append(f"| {preset} ({results['num_params'][preset]:,}) | {b} | "
                   f"{common.ms(r['unguided'])} | {common.ms(r['guided'])} | "
                   f"{common.ms(r['two_pass'])} | {r['guided/unguided']:.2f} | "
                   f"{r['guided/two_pass']:.2f} |")
  gi = results["guidance_interval"]
  lines += ["", f"Guidance interval λ ∈ [{gi['interval'][0]:.2f}, {gi['interval'][1]:.2f}] "
            f"(half of {4 * common.SAMPLING_STEPS} steps guided), batch {gi['batch_size']}: "
            f"{common.ms(gi['seconds_per_step'])} per step.", ""]
  lines += ["### lax.scan against a Python loop of a jitted step (guided, per step)", "",
            "| batch | scan | Python loop | scan / loop |", "|---|---|---|---|"]
  for b, r in results["scan_vs_loop"].items():
    lines.append(f"| {b} | {common.ms(r['scan'])} | {common.ms(r['loop'])} | "
                 f"{r['scan/loop']:.2f} |")
  lines += ["", "| T | " + " | ".join(results["compile"]) + " |",
            "|---|" + "---|" * len(results["compile"]),
            "| compile (s) | " + " | ".join(f"{s:.1f}" for s in results["compile"].values())
            + " |", ""]
  rules = results["rules"]
  lines += [f"### Guidance rules, per DDIM step ({rules['steps']} steps, batch "
            f"{rules['batch_size']}, first preset)", "", "| rule | step | / CFG |", "|---|---|---|"]
  for name, r in rules.items():
    if name not in ("batch_size", "steps"):
      lines.append(f"| {name} | {common.ms(r['seconds_per_step'])} | {r['/cfg']:.2f} |")
  lines += ["", "| T | " + " | ".join(results["compile_apg"]) + " |",
            "|---|" + "---|" * len(results["compile_apg"]),
            "| compile with APG (s) | " + " | ".join(
                f"{s:.1f}" for s in results["compile_apg"].values()) + " |", ""]
  lines += ["### Training step (first preset)", "", "| compute dtype | step | images/s |",
            "|---|---|---|"]
  for dtype, r in results["training"].items():
    lines.append(f"| {dtype} | {common.ms(r['seconds_per_step'])} | {r['images_per_sec']:.1f} |")
  mm = results["matmul"]
  lines += ["", f"### FLOP/s (matmul peak {mm['peak'] / 1e9:.1f} GFLOP/s, float32)", "",
            "| preset | forward batch | XLA options | GFLOP | time | GFLOP/s | % of peak |",
            "|---|---|---|---|---|---|---|"]
  for preset, rows in results["forward"].items():
    for name in ("ours", "xla_defaults"):
      r = rows[name]
      lines.append(f"| {preset} | {rows['batch_size']} | {name} | {r['flops'] / 1e9:.2f} | "
                   f"{common.ms(r['seconds'])} | {r['flops_per_sec'] / 1e9:.1f} | "
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
        lines.append(f"| {mode} sampling step, batch {b} | {common.ms(ours[b][mode])} | "
                     f"{common.ms(r[mode])} | {ours[b][mode] / r[mode]:.2f} |")
    t_ours = results["training"]["float32"]["seconds_per_step"]
    t_peer = peer["training"]["seconds_per_step"]
    lines.append(f"| training step, float32 | {common.ms(t_ours)} | {common.ms(t_peer)} | "
                 f"{t_ours / t_peer:.2f} |")
  lines += ["", "### Targets (worst case over the rows above)", ""]
  lines += common.targets_table(results["targets"])
  return "\n".join(lines)


def main() -> None:
  parser = common.arg_parser(__doc__.splitlines()[0],
                             "the toy2d MLP and few sizes: checks that the benchmark runs")
  args = parser.parse_args()
  results = run(args.quick, common.repeats_flag(parser, args))
  common.emit(results, report(results), args.out)


if __name__ == "__main__":
  main()
