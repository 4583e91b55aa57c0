"""Tests of the CPU benchmark: `--quick` runs and reports every figure."""
import json
import pathlib
import subprocess
import sys

from bench import run

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quick_run_prints_the_tables_and_every_figure(tmp_path):
  out = tmp_path / "bench.json"
  proc = subprocess.run([sys.executable, "-m", "bench.run", "--quick", "--repeats=1",
                         f"--out={out}"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                        check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = next(l for l in proc.stdout.splitlines() if l.startswith("BENCH_JSON "))
  results = json.loads(line[len("BENCH_JSON "):])
  assert results == json.loads(out.read_text())
  assert "### Targets" in proc.stdout and "| toy2d (" in proc.stdout
  for row in results["sampling"]["toy2d"].values():
    assert all(row[k] > 0 for k in ("unguided", "guided", "two_pass"))
  assert set(results["compile"]) == set(results["compile_apg"]) == {"16", "256"}
  assert set(results["rules"]) == {"batch_size", "steps", "cfg", *run.RULE_OPTIONS}
  assert results["rules"]["cfg"]["/cfg"] == 1. and all(
      r["seconds_per_step"] > 0 for k, r in results["rules"].items() if isinstance(r, dict))
  assert "| autoguidance, one call |" in proc.stdout
  assert results["training"]["float32"]["images_per_sec"] > 0
  assert 0 < results["forward"]["toy2d"]["ours"]["flops"]
  assert results["memory"]["toy2d"]["guided"] >= results["memory"]["toy2d"]["params"]
  assert "skipped" in results["peer"]
  assert set(results["targets"]) == set(run.TARGETS) - {
      "ours / diffusers, guided sampling step", "ours / diffusers, training step"}
