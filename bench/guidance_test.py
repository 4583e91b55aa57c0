"""bench.guidance --quick on a tiny image run with random weights: every variant measured,
the resume, the report and the plot; and its flags."""
import json

import jax
import numpy as np
import pytest

from bench import guidance
from cfg_jax import checkpointing
from cfg_jax import config_files
from cfg_jax import models
from cfg_jax import test_configs


def _random_run(workdir, config, steps):
  """A run whose checkpoints hold random EMA params (a trained one is not needed here)."""
  rng = np.random.default_rng(0)
  config_files.save_config(workdir, config)
  checkpointer = checkpointing.Checkpointer(workdir, max_to_keep=len(steps))
  shapes = models.param_shapes(models.create_model(config), config)
  for step in steps:
    params = jax.tree.map(lambda s: rng.normal(0., 0.1, s.shape).astype(s.dtype), shapes)
    checkpointer.save(step, {"ema_params": params}, {"signature": checkpointing.signature(config)})
  checkpointer.wait()
  checkpointer.close()


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp("guidance")
  config = test_configs.tiny_image_run()
  _random_run(root / "run", config, steps=(2, 8))
  small = test_configs.tiny_image_run()
  small.model.ch = 4
  _random_run(root / "small", small, steps=(4,))
  return root


def test_quick_measures_every_variant_and_resumes(runs_dir, capsys):
  args = ["--quick", "--samplers=ddim", f"--workdir={runs_dir / 'run'}",
          f"--guide_workdir={runs_dir / 'small'}",
          "--samples_per_point=20", "--steps=3", "--batch_size=20",
          f"--out={runs_dir / 'out'}"]
  results = guidance.main(args)
  out = runs_dir / "out"
  measured = [(r["sampler"], r["variant"]) for r in results["rows"]]
  assert measured == [("ddim", v.name) for v in guidance.VARIANTS
                      for _ in range(guidance.QUICK_WS)]
  assert results["guide_steps"] == {"early": 2, "small": 4}
  nfe = {r["variant"]: r["nfe"] for r in results["rows"]}
  assert nfe["cfg"] == 6 and nfe["cfg_interval"] < 6  # the interval guides fewer steps
  assert json.loads((out / "results.json").read_text())["rows"] == results["rows"]
  report = (out / "report.md").read_text()
  assert "| CFG++ (λ = 1 + w) | -0.3 | 6 |" in report and "best FID at accuracy" in report
  assert (out / "frontier_ddim.png").read_bytes()[:4] == b"\x89PNG"
  # A rerun measures nothing again: the points on disk are kept as they are.
  point = out / "points" / "ddim" / "apg" / "w1.json"
  point.write_text(json.dumps(json.loads(point.read_text()) | {"fid": 1234.5}))
  again = guidance.main(args)
  assert 1234.5 in [r["fid"] for r in again["rows"]]
  # --ws measures only those w of a sweep, --report_only nothing: a missing point stays so.
  missing = out / "points" / "ddim" / "cfg" / "w0.1.json"
  missing.unlink()
  only = guidance.main([*args, "--variants=cfg", "--ws=0"])
  assert [(r["variant"], r["w"]) for r in only["rows"]] == [("cfg", 0.)]
  reported = guidance.main([*args, "--report_only"])
  assert not missing.exists() and len(reported["rows"]) == len(results["rows"]) - 1
  capsys.readouterr()


def test_summary_and_target_on_known_rows():
  row = lambda v, w, acc, fid: {"sampler": "ddim", "variant": v, "w": w, "accuracy": acc,
                                "fid": fid}
  rows = [row("cfg", 0., 0.95, 10.), row("cfg", 3., 0.995, 30.), row("apg", 2., 0.992, 14.),
          row("apg", 4., 0.999, 20.), row("rescale", 2., 0.98, 11.)]
  by_name = {s["variant"]: s for s in guidance.summary(rows, "ddim")}
  assert by_name["apg"]["accurate_over_cfg"] == pytest.approx(1.4)
  assert by_name["cfg"]["accurate_over_cfg"] == pytest.approx(3.)
  assert by_name["rescale"]["best_accurate"] is None
  (target,) = guidance.targets({"rows": rows}).values()
  assert target["worst"] == pytest.approx(1.4) and target["met"]


@pytest.mark.parametrize("flags,message", [
    (["--samplers=euler"], "--samplers must be names of"),
    (["--variants=cfg,magic"], "--variants has unknown names ['magic']"),
    (["--guide_fraction=1.5"], "--guide_fraction must lie in (0, 1)"),
    (["--samples_per_point=2"], "--samples_per_point must be >= 10"),
    (["--ws=0,x"], "--ws must be comma-separated numbers"),
])
def test_bad_flags_are_refused_before_anything_runs(runs_dir, flags, message, capsys):
  with pytest.raises(SystemExit):
    guidance.main([f"--workdir={runs_dir / 'run'}", f"--out={runs_dir / 'bad'}", *flags])
  assert message in capsys.readouterr().err
  assert not (runs_dir / "bad").exists()
