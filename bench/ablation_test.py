"""Tests of the recipe ablation: its variants, the shipped preset, the table."""
import pytest

from bench import ablation
from bench import common
from cfg_jax import config_lib
from cfg_jax import models


@pytest.mark.parametrize("name", list(ablation.VARIANTS))
def test_every_variant_is_a_valid_config(name):
  config_lib.validate(ablation.variant_config(name))


def test_the_baseline_is_the_small_unet_and_combined_is_the_shipped_preset():
  baseline = ablation.variant_config("baseline")
  assert models.num_params(models.create_model(baseline), baseline) == 345_713
  preset, combined = common.preset("mnist"), ablation.variant_config("combined")
  for group in ("model", "diffusion"):
    assert combined[group].to_dict() == preset[group].to_dict(), group
  for field in ("learning_rate", "lr_schedule", "ema_decay", "batch_size", "p_uncond"):
    assert combined.training[field] == preset.training[field], field


def test_each_single_change_differs_from_the_baseline_in_its_fields_only():
  base = config_lib.flatten(ablation.variant_config("baseline"))
  for name, (_, fields) in ablation.VARIANTS.items():
    changed = {k for k, v in config_lib.flatten(ablation.variant_config(name)).items()
               if v != base[k]}
    assert changed == {k for k, v in fields.items() if v != base[k]}, name


def test_table_lists_variants_in_order_with_the_floor():
  metrics = {"accuracy": 0.5, "fid": 10., "inception_score": 8.}
  result = {"steps": 1000, "what": "x", "metrics": {f"{w:g}": metrics for w in ablation.WS}}
  text = ablation.table({"no_dropout": result, "baseline": result}, metrics)
  lines = text.splitlines()
  assert lines[2].startswith("| baseline |") and lines[3].startswith("| no_dropout |")
  assert lines[4].startswith("| real digits |") and "| 0.500 | 10.0 | 8.00 |" in lines[4]


def test_unknown_variant_is_named():
  with pytest.raises(SystemExit):
    ablation.main(["--only=baseline,bigger"])


@pytest.mark.parametrize("args, named", [
    (["--steps=1"], "--steps must be at least 2"),
    (["--only=combined_lr_1e-3"], "no step time for ['combined_lr_1e-3']"),
    (["--steps=5", "--guidance_interval=3,-1"], "--guidance_interval must be lo,hi"),
])
def test_bad_budgets_are_refused_before_anything_trains(args, named, tmp_path, capsys,
                                                        monkeypatch):
  monkeypatch.setattr(ablation, "run_variant", lambda *a, **k: pytest.fail("trained"))
  times = tmp_path / "seconds.json"
  times.write_text('{"seconds": {"combined": 0.5}}')
  with pytest.raises(SystemExit):
    ablation.main([*args, f"--step_seconds={times}", f"--workdir={tmp_path / 'w'}"])
  assert named in capsys.readouterr().err


class _Evaluator:
  def __init__(self, *args, **kwargs):
    pass

  def floor(self):
    return {"accuracy": 0.9, "fid": 5., "inception_score": 9.}


def _fake_run_variant(calls):
  def run_variant(name, *, steps, guidance_interval, **_):
    calls[name] = steps, tuple(guidance_interval)
    metrics = {"accuracy": 0.5, "fid": 10., "inception_score": 8.}
    return {"steps": steps, "what": "x", "metrics": {f"{w:g}": metrics for w in ablation.WS}}
  return run_variant


def test_steps_trains_every_variant_that_many_steps_guided_at_every_step(tmp_path,
                                                                         monkeypatch):
  calls = {}
  monkeypatch.setattr(ablation.quality, "Evaluator", _Evaluator)
  monkeypatch.setattr(ablation, "run_variant", _fake_run_variant(calls))
  ablation.main(["--steps=7", "--only=combined,combined_p_uncond_0.2",
                 f"--workdir={tmp_path}"])
  assert calls == {"combined": (7, ()), "combined_p_uncond_0.2": (7, ())}
  assert "| combined_p_uncond_0.2 |" in (tmp_path / "ablation.md").read_text()


def test_a_guidance_interval_reports_beside_the_table_guided_at_every_step(tmp_path,
                                                                           monkeypatch):
  calls = {}
  monkeypatch.setattr(ablation.quality, "Evaluator", _Evaluator)
  monkeypatch.setattr(ablation, "run_variant", _fake_run_variant(calls))
  ablation.main(["--steps=7", "--only=combined", f"--workdir={tmp_path}"])
  ablation.main(["--steps=7", "--only=combined", "--guidance_interval=-1,3",
                 f"--workdir={tmp_path}"])
  assert calls == {"combined": (7, (-1., 3.))}
  guided = tmp_path / "guided_-1_3"
  assert sorted(p.name for p in guided.iterdir()) == ["ablation.md", "combined.json",
                                                       "floor.json"]
  assert (tmp_path / "combined.json").exists() and (tmp_path / "ablation.md").exists()
