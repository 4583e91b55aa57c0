"""Tests of the accelerator benchmark: the peak table, and `--quick` on CPU."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from bench import accelerator

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("device_kind,tflops", [
    ("NVIDIA H100 80GB HBM3", 989), ("NVIDIA H100 PCIe", 756), ("NVIDIA H200", 989),
    ("NVIDIA A100-SXM4-80GB", 312), ("TPU v4", 275), ("TPU v5 lite", 197), ("TPU v5", 459),
    ("TPU v6 lite", 918)])
def test_peak_flops_by_device_kind(device_kind, tflops):
  peak = accelerator.peak_flops(device_kind, measured=1.)
  assert peak["flops_per_sec"] == tflops * 1e12 and "data sheet" in peak["source"]


def test_peak_flops_falls_back_to_the_measured_matmul():
  assert accelerator.peak_flops("cpu", measured=3e11) == {
      "flops_per_sec": 3e11, "source": "measured bfloat16 matmul"}


def test_quick_run_reports_every_figure_consistently(tmp_path):
  """The tiny UNet on the CPU, compiled without LLVM optimizations to save minutes: checks
  the structure and the arithmetic of the report, not speed."""
  out = tmp_path / "accelerator.json"
  env = {**os.environ, "XLA_FLAGS": "--xla_backend_optimization_level=0"}
  proc = subprocess.run([sys.executable, "-m", "bench.accelerator", "--quick", "--repeats=1",
                         "--memory_limit_mib=24", f"--out={out}"], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON "))
  results = json.loads(line[len("BENCH_JSON "):])
  assert results == json.loads(out.read_text())
  assert "### tiny (" in proc.stdout and "### Targets" in proc.stdout
  assert results["memory_limit"] == {"bytes": 24 * 2**20, "source": "--memory_limit_mib"}
  peak = results["peak_bf16"]["flops_per_sec"]
  assert peak == results["matmul_bf16"]["peak"] > 0  # no data sheet for a CPU
  [(name, p)] = results["presets"].items()
  assert name == "tiny" and p["num_params"] > 0 and p["model_flops_per_step"] > 0
  for mode in ("no_remat", "remat"):
    largest = p["largest_batch"][mode]
    assert largest["batch"] >= 8 and largest["batch"] % 4 == 0 and largest["confirmed_by_running"]
    assert largest["bytes"] <= 24 * 2**20 and largest["bytes_per_image"] > 0
    assert 8 in largest["compiled_batches"]  # the timed batch is one of the fit's two
    training = p["training"][mode]
    assert training["images_per_sec"] == pytest.approx(8 / training["seconds_per_step"])
    assert training["mfu"] == pytest.approx(p["model_flops_per_step"] / peak
                                            / training["seconds_per_step"])
  row = p["sampling"]["16"]
  for mode in ("unguided", "guided", "two_pass"):
    assert row["images_per_sec"][mode] == pytest.approx(16 / row[mode])
  assert row["guided/unguided"] == pytest.approx(row["guided"] / row["unguided"])
  targets = results["targets"]
  assert targets["guided / unguided"]["worst"] == row["guided/unguided"]
  assert targets["training MFU"]["worst"] == max(t["mfu"] for t in p["training"].values())
  assert targets["training MFU"]["preset"] == "tiny"
  for t in targets.values():
    assert t["met"] == (t["worst"] >= t["bound"] if t["comparison"] == ">="
                        else t["worst"] <= t["bound"])
  if importlib.util.find_spec("diffusers") is None:
    assert "not installed" in p["peer"]["skipped"]
    assert set(targets) == set(accelerator.TARGETS) - {"ours / diffusers, training step"}
  else:  # the peer ran on the CPU, as jax did, in bfloat16
    assert (p["peer"]["device"], p["peer"]["dtype"]) == ("cpu", "bfloat16")
    assert p["peer"]["num_params"] == p["num_params"]
    assert targets["ours / diffusers, training step"]["worst"] == pytest.approx(
        min(t["seconds_per_step"] for t in p["training"].values())
        / p["peer"]["training"]["seconds_per_step"])
