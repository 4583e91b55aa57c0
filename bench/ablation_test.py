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
