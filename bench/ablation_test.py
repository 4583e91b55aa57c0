"""Tests of the recipe ablation: its variants, the shipped preset, the table."""
import numpy as np
import pytest

from bench import ablation
from bench import common
from cfg_jax import config_lib
from cfg_jax import images
from cfg_jax import models


@pytest.mark.parametrize("name", list(ablation.VARIANTS))
def test_every_variant_is_a_valid_config(name):
  config_lib.validate(ablation.variant_config(name))


def test_the_baseline_is_the_small_unet_and_the_preset_variant_is_the_shipped_preset():
  baseline = ablation.variant_config("baseline")
  assert models.num_params(models.create_model(baseline), baseline) == 345_713
  assert baseline.data.image_size == 32
  preset, variant = common.preset("mnist"), ablation.variant_config(ablation.PRESET)
  for group in ("data", "model", "diffusion"):
    assert variant[group].to_dict() == preset[group].to_dict(), group
  for field in ("learning_rate", "lr_schedule", "ema_decay", "batch_size", "p_uncond",
                "adam_b2"):
    assert variant.training[field] == preset.training[field], field


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
    (["--only=no_dropout"], "no step time for ['no_dropout']"),
    (["--only=combined_p_uncond_0.2", "--guidance_interval=3,-1"],
     "--guidance_interval must be lo,hi"),
])
def test_bad_flags_are_refused_before_anything_trains(args, named, tmp_path, capsys,
                                                      monkeypatch):
  monkeypatch.setattr(ablation, "run_variant", lambda *a, **k: pytest.fail("trained"))
  times = tmp_path / "seconds.json"
  times.write_text('{"seconds": {"combined": 0.5}}')
  with pytest.raises(SystemExit):
    ablation.main([*args, f"--step_seconds={times}", f"--workdir={tmp_path / 'w'}"])
  assert named in capsys.readouterr().err
  assert not (tmp_path / "w").exists()


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


def _step_seconds(tmp_path):
  times = tmp_path / "seconds.json"
  times.write_text('{"seconds": {"combined": 0.6}}')
  return f"--step_seconds={times}"


@pytest.mark.parametrize("name", list(ablation.TIMED_AS))
def test_a_variant_timed_as_its_base_trains_its_steps_guided_at_every_step(name, tmp_path,
                                                                           monkeypatch):
  calls = {}
  monkeypatch.setattr(ablation.cfg_evaluator, "Evaluator", _Evaluator)
  monkeypatch.setattr(ablation, "run_variant", _fake_run_variant(calls))
  ablation.main(["--minutes=1", _step_seconds(tmp_path), f"--only=combined,{name}",
                 f"--workdir={tmp_path / 'w'}"])
  assert calls == {"combined": (100, ()), name: (100, ())}
  assert f"| {name} |" in (tmp_path / "w" / "ablation.md").read_text()


def test_a_timed_as_variant_computes_the_same_step_as_its_base():
  for name, base in ablation.TIMED_AS.items():
    a, b = ablation.variant_config(name), ablation.variant_config(base)
    assert a.model.to_dict() == b.model.to_dict(), name
    assert a.diffusion.to_dict() == b.diffusion.to_dict(), name
    changed = {k for k, v in config_lib.flatten(a.training).items()
               if v != config_lib.flatten(b.training)[k]}
    assert changed <= {"learning_rate", "p_uncond", "adam_b2"}, name


def test_a_guidance_interval_reports_beside_the_table_guided_at_every_step(tmp_path,
                                                                           monkeypatch):
  calls = {}
  monkeypatch.setattr(ablation.cfg_evaluator, "Evaluator", _Evaluator)
  monkeypatch.setattr(ablation, "run_variant", _fake_run_variant(calls))
  workdir, times = tmp_path / "w", _step_seconds(tmp_path)
  ablation.main(["--minutes=1", times, "--only=combined", f"--workdir={workdir}"])
  ablation.main(["--minutes=1", times, "--only=combined", "--guidance_interval=-1,3",
                 f"--workdir={workdir}"])
  assert calls == {"combined": (100, (-1., 3.))}
  guided = workdir / "guided_-1_3"
  assert sorted(p.name for p in guided.iterdir()) == ["ablation.md", "combined.json",
                                                       "floor.json"]
  assert (workdir / "combined.json").exists() and (workdir / "ablation.md").exists()


def test_pad_to_pads_samples_as_the_data_pipeline_pads_the_digits():
  digits = np.random.default_rng(0).integers(0, 256, (3, 28, 28, 1), dtype=np.uint8)
  as_floats = lambda x: x.astype(np.float32) / 127.5 - 1.
  padded = ablation.pad_to(as_floats(digits), 32)
  np.testing.assert_array_equal(padded, as_floats(np.stack([images.fit(d, 32) for d in digits])))
  np.testing.assert_array_equal(ablation.pad_to(padded, 32), padded)
  with pytest.raises(ValueError, match="28x28 cannot be padded evenly to 31x31"):
    ablation.pad_to(as_floats(digits), 31)


def test_calibrate_times_each_variant_at_its_own_batch(monkeypatch):
  batches = {}

  class _TrainStep:
    def __init__(self, config):
      self.config = config

    def seconds(self, batch_size, repeats):
      batches[self.config.training.batch_size] = batch_size
      return 0.5

  monkeypatch.setattr(ablation.common, "TrainStep", _TrainStep)
  assert ablation.calibrate(["combined", "combined_batch_32"]) == {
      "combined": 0.5, "combined_batch_32": 0.5}
  assert batches == {64: 64, 32: 32}
