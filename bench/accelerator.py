r"""The accelerator benchmark: bfloat16 training (MFU, largest batch) and guided sampling.

    pip install -e ".[cuda,bench]"    # jax for CUDA, torch and diffusers for the peer
    python -m bench.accelerator --out=accelerator.json
    python -m bench.accelerator --quick --memory_limit_mib=64   # a tiny UNet, on any device

For configs/imagenet64.py (296M parameters) and reduced64 (the same UNet at ch 32, one
block per level), both in bfloat16, on one device (`jax.devices()[0]`):

- the largest batch per device without and with remat (`largest_batch`: XLA's memory
  analysis of the compiled train step, a multiple of --batch_step, within the memory jax
  may still use or --memory_limit_mib where the device reports none, as the CPU),
  confirmed by running one step at it;
- training images/s at --train_batch without and with remat, and the model FLOP
  utilisation: the FLOPs of the step without remat (XLA's count of the program before
  optimization: recomputation is not model work) / seconds / the device's peak bfloat16
  FLOP/s (PEAK_BF16 by device kind; elsewhere the measured bfloat16 matmul peak, which is
  reported for every device as a cross-check);
- guided sampling per step at batch 16 and 64: unguided, guided in one batched pass,
  guided in two passes (`common.bench_sampling`, as in bench.run), as images per second;
- the same training and sampling steps in diffusers' UNet2DModel of the same
  architecture with bfloat16 autocast (bench/peer_diffusers.py), on the GPU only (or
  the CPU with --quick). It runs first, in a process of its own, before jax starts
  and takes 75% of the GPU's memory.

It prints markdown tables, the targets met or missed and `BENCH_JSON {...}` (also --out).
Times are the fastest of --repeats calls after one untimed call (`common.timed`).
"""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from typing import Any

import jax.numpy as jnp
import ml_collections

from bench import common
from bench import largest_batch

# Dense bfloat16 peak FLOP/s by jax's device_kind (first match of a case-insensitive
# substring, so the more specific names come first): NVIDIA's and Google's data sheets.
PEAK_BF16 = (("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H100", 989e12),
             ("H200", 989e12), ("A100", 312e12), ("TPU v4", 275e12), ("TPU v5 lite", 197e12),
             ("TPU v5e", 197e12), ("TPU v5p", 459e12), ("TPU v5", 459e12),
             ("TPU v6 lite", 918e12), ("TPU v6e", 918e12))
REMAT = {"no_remat": False, "remat": True}
# name: (comparison, bound); the figure is the worst over presets and batches >= 16, but
# MFU (the first preset's best training row).
TARGETS = {"training MFU": (">=", 0.40), "ours / diffusers, training step": ("<=", 0.7),
           "guided / unguided": ("<=", 2.0), "guided 1 pass / 2 passes": ("<=", 0.9)}


def reduced64_config() -> ml_collections.ConfigDict:
  """bench.run's reduced64 in bfloat16."""
  return common.with_model(common.reduced64_config(), dtype="bfloat16")


def tiny_config() -> ml_collections.ConfigDict:
  """--quick: configs/imagenet64.py's UNet at 16x16 pixels, 16 channels and two levels."""
  config = common.preset("imagenet64")
  config.data.image_size = 16
  config.model.update(ch=16, num_res_blocks=1, ch_mult=(1, 2), attn_resolutions=(8,),
                      num_head_channels=16)
  return config


def peak_flops(device_kind: str, measured: float) -> dict[str, Any]:
  """The device's peak bfloat16 FLOP/s from PEAK_BF16, else the measured matmul peak."""
  for name, flops in PEAK_BF16:
    if name.lower() in device_kind.lower():
      return {"flops_per_sec": flops, "source": f"data sheet ({name})"}
  return {"flops_per_sec": measured, "source": "measured bfloat16 matmul"}


def bench_preset(config: ml_collections.ConfigDict, *, train_batch: int, sampling_batches,
                 limit: int | None, batch_step: int, max_batch: int, repeats: int,
                 peak: float) -> dict[str, Any]:
  """Largest batches, training and sampling of one preset, without and with remat."""
  steps = {mode: common.TrainStep(common.with_model(config, remat=remat))
           for mode, remat in REMAT.items()}
  model_flops = common.flops(steps["no_remat"].lower(train_batch))
  out = {"model_flops_per_step": model_flops, "train_batch": train_batch,
         "largest_batch": {}, "training": {}}
  for mode, step in steps.items():
    if limit is None:
      out["largest_batch"][mode] = {"skipped": "no memory limit"}
    else:
      common.progress(f"largest batch, {mode}")
      out["largest_batch"][mode] = largest_batch.measure(
          step, limit, batch_step=batch_step, train_batch=train_batch, cap=max_batch)
    largest = out["largest_batch"][mode].get("batch")
    if largest is not None and largest < train_batch:
      out["training"][mode] = {"skipped": f"batch {train_batch} does not fit (largest "
                                          f"{largest})"}
      continue
    common.progress(f"training, {mode}")
    seconds = step.seconds(train_batch, repeats)
    out["training"][mode] = {"seconds_per_step": seconds,
                             "images_per_sec": train_batch / seconds,
                             "mfu": model_flops / seconds / peak}
  common.progress("sampling")
  net = common.Network(config)
  out["num_params"] = net.num_params
  out["sampling"] = common.bench_sampling(net, sampling_batches, repeats)
  for b, row in out["sampling"].items():
    row["images_per_sec"] = {mode: int(b) / row[mode]
                             for mode in ("unguided", "guided", "two_pass")}
  return out


def bench_peers(presets: dict[str, ml_collections.ConfigDict], *, quick: bool, train_batch: int,
                sampling_batches, repeats: int) -> dict[str, dict[str, Any]]:
  """peer_diffusers.measure of each preset, each in a new process (before jax starts)."""
  missing = [m for m in ("torch", "diffusers") if importlib.util.find_spec(m) is None]
  if missing:
    why = f"{' and '.join(missing)} not installed (pip install -e '.[bench]')"
    return {name: {"skipped": why} for name in presets}
  out = {}
  for name, config in presets.items():
    common.progress(f"diffusers peer, {name}")
    spec = common.peer_spec(config, sampling_batches, train_batch, repeats)
    spec["device"] = None if quick else "cuda"
    proc = subprocess.run([sys.executable, "-m", "bench.peer_diffusers", json.dumps(spec)],
                          cwd=common.ROOT, capture_output=True, text=True, check=False)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("PEER_JSON ")]
    out[name] = (json.loads(lines[-1][len("PEER_JSON "):]) if proc.returncode == 0 and lines
                 else {"skipped": f"the peer failed: {proc.stderr.strip()[-500:]}"})
  return out


def run_all(quick: bool, repeats: int, *, train_batch: int, batch_step: int, max_batch: int,
            memory_limit_mib: int | None) -> dict[str, Any]:
  """Every measurement, the diffusers peers first; returns the nested dict of figures."""
  presets = ({"tiny": tiny_config()} if quick
             else {"imagenet64": common.preset("imagenet64"), "reduced64": reduced64_config()})
  sampling_batches = (16,) if quick else (16, 64)
  peers = bench_peers(presets, quick=quick, train_batch=train_batch,
                      sampling_batches=sampling_batches, repeats=repeats)
  common.progress("bfloat16 matmul peak")
  matmul = common.matmul_peak((256, 512) if quick else (4096, 8192), repeats, jnp.bfloat16)
  machine = common.machine()
  peak = peak_flops(machine["device_kind"], matmul["peak"])
  limit = largest_batch.memory_limit(memory_limit_mib)
  results = {"machine": machine, "quick": quick, "repeats": repeats, "w": common.W,
             "matmul_bf16": matmul, "peak_bf16": peak, "memory_limit": limit, "presets": {}}
  for name, config in presets.items():
    common.progress(name)
    results["presets"][name] = bench_preset(
        config, train_batch=train_batch, sampling_batches=sampling_batches,
        limit=limit["bytes"], batch_step=batch_step, max_batch=max_batch, repeats=repeats,
        peak=peak["flops_per_sec"])
    results["presets"][name]["peer"] = peers[name]
  results["targets"] = targets(results)
  return results


def _same_device(results: dict[str, Any], peer: dict[str, Any]) -> bool:
  return "skipped" not in peer and (peer["device"] == "cuda") == (
      results["machine"]["backend"] == "gpu")


def _best_training(preset: dict[str, Any]) -> dict[str, Any] | None:
  rows = [r for r in preset["training"].values() if "skipped" not in r]
  return min(rows, key=lambda r: r["seconds_per_step"]) if rows else None


def targets(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
  """Each target of TARGETS that was measured, with its worst figure (`common.judge`)."""
  presets = results["presets"]
  first = next(iter(presets))
  figures = {}
  best = _best_training(presets[first])
  if best:
    figures["training MFU"] = best["mfu"]
  rows = [row for p in presets.values() for b, row in p["sampling"].items() if int(b) >= 16]
  if rows:
    figures["guided / unguided"] = max(r["guided/unguided"] for r in rows)
    figures["guided 1 pass / 2 passes"] = max(r["guided/two_pass"] for r in rows)
  ratios = [_best_training(p)["seconds_per_step"] / p["peer"]["training"]["seconds_per_step"]
            for p in presets.values() if _best_training(p) and _same_device(results, p["peer"])
            and "skipped" not in p["peer"]["training"]]
  if ratios:
    figures["ours / diffusers, training step"] = max(ratios)
  out = common.judge(figures, TARGETS)
  if "training MFU" in out:
    out["training MFU"]["preset"] = first
  return out


def _gib(n: float) -> str:
  return f"{n / 2**30:,.2f} GiB"


def report(results: dict[str, Any]) -> str:
  """The markdown tables of the results."""
  m, peak, mm = results["machine"], results["peak_bf16"], results["matmul_bf16"]
  limit = results["memory_limit"]
  lines = [f"Device: {m['device_kind']} ({m['backend']}, {m['devices']} device(s), one used), "
           f"host {m['cpu']}, jax {m['jax']}, Python {m['python']}, {m['date']}; fastest of "
           f"{results['repeats']} calls; w = {results['w']:g}.", "",
           f"Peak bfloat16: {peak['flops_per_sec'] / 1e12:,.1f} TFLOP/s ({peak['source']}); "
           f"measured matmul {mm['peak'] / 1e12:,.1f} TFLOP/s. Memory for a train step: "
           + (f"{_gib(limit['bytes'])} ({limit['source']})." if limit["bytes"] else
              f"unknown ({limit['source']}).")]
  for name, p in results["presets"].items():
    lines += ["", f"### {name} ({p['num_params']:,} parameters, bfloat16)", "",
              f"Model FLOPs of a training step at batch {p['train_batch']}: "
              f"{p['model_flops_per_step'] / 1e9:,.1f} GFLOP.", "",
              "| | largest batch per device | XLA bytes at it | bytes per image | "
              "training step | images/s | MFU |", "|---|---|---|---|---|---|---|"]
    for mode in REMAT:
      lb, tr = p["largest_batch"][mode], p["training"][mode]
      fit = f"{lb['skipped']} | - | -" if "skipped" in lb else (
          f"{lb['batch']}{'' if lb['confirmed_by_running'] else ' (not confirmed)'} | "
          f"{_gib(lb['bytes']) if lb['bytes'] else '-'} | "
          f"{lb['bytes_per_image'] / 2**20:,.1f} MiB")
      speed = (f"{common.ms(tr['seconds_per_step'])} | {tr['images_per_sec']:,.1f} | "
               f"{tr['mfu']:.1%}" if "skipped" not in tr else f"{tr['skipped']} | - | -")
      lines.append(f"| {mode.replace('_', ' ')} | {fit} | {speed} |")
    lines += ["", "| sampling batch | unguided | guided, 1 pass | guided, 2 passes | "
              "guided / unguided | 1 pass / 2 passes |", "|---|---|---|---|---|---|"]
    for b, r in p["sampling"].items():
      ips = r["images_per_sec"]
      lines.append(f"| {b} | {ips['unguided']:,.1f} img/s | {ips['guided']:,.1f} img/s | "
                   f"{ips['two_pass']:,.1f} img/s | {r['guided/unguided']:.2f} | "
                   f"{r['guided/two_pass']:.2f} |")
    lines += _peer_lines(results, p)
  lines += ["", "### Targets", ""] + common.targets_table(results["targets"])
  return "\n".join(lines)


def _peer_lines(results: dict[str, Any], p: dict[str, Any]) -> list[str]:
  peer = p["peer"]
  if "skipped" in peer:
    return ["", f"diffusers peer skipped: {peer['skipped']}"]
  v = peer["versions"]
  lines = ["", f"diffusers UNet2DModel, torch {v['torch']}, diffusers {v['diffusers']}, "
           f"{peer['dtype']} on {peer['device_name']}, {peer['num_params']:,} parameters"
           + ("" if _same_device(results, peer) else " (not the device jax ran on: no ratio)")
           + ":", "", "| work | ours | diffusers | ours / diffusers |", "|---|---|---|---|"]
  ratio = lambda ours, theirs: f"{ours / theirs:.2f}" if _same_device(results, peer) else "-"
  for b, r in peer["sampling"].items():
    for mode in ("unguided", "guided"):
      if "skipped" in r:
        lines.append(f"| {mode} sampling step, batch {b} | - | {r['skipped']} | - |")
        continue
      ours = p["sampling"][b][mode]
      lines.append(f"| {mode} sampling step, batch {b} | {common.ms(ours)} | "
                   f"{common.ms(r[mode])} | {ratio(ours, r[mode])} |")
  best, theirs = _best_training(p), peer["training"]
  if best and "skipped" not in theirs:
    t_ours, t_peer = best["seconds_per_step"], theirs["seconds_per_step"]
    lines.append(f"| training step, batch {p['train_batch']} | {common.ms(t_ours)} | "
                 f"{common.ms(t_peer)} | {ratio(t_ours, t_peer)} |")
  elif "skipped" in theirs:
    lines.append(f"| training step, batch {p['train_batch']} | - | {theirs['skipped']} | - |")
  return lines


def main() -> None:
  parser = common.arg_parser(__doc__.splitlines()[0],
                             "a tiny UNet and small batches: checks that the benchmark runs")
  parser.add_argument("--train_batch", type=int, default=None,
                      help="per-device batch of the timed training steps (default 64; 8 with "
                           "--quick)")
  parser.add_argument("--batch_step", type=int, default=None,
                      help="the largest batch is searched in multiples of this (default 8; "
                           "4 with --quick)")
  parser.add_argument("--max_batch", type=int, default=4096, help="largest batch searched")
  parser.add_argument("--memory_limit_mib", type=int, default=None,
                      help="memory for a train step where the device reports none (CPU)")
  args = parser.parse_args()
  repeats = common.repeats_flag(parser, args)
  train_batch = args.train_batch or (8 if args.quick else 64)
  batch_step = args.batch_step or (4 if args.quick else 8)
  for flag, value in (("train_batch", train_batch), ("batch_step", batch_step),
                      ("max_batch", args.max_batch), ("memory_limit_mib", args.memory_limit_mib)):
    if value is not None and value < 1:
      parser.error(f"--{flag} must be >= 1, got {value}.")
  results = run_all(args.quick, repeats, train_batch=train_batch, batch_step=batch_step,
                    max_batch=args.max_batch, memory_limit_mib=args.memory_limit_mib)
  common.emit(results, report(results), args.out)


if __name__ == "__main__":
  main()
