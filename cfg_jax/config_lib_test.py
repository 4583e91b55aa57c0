"""Tests of the config schema and its validation."""
import math
import pathlib

import pytest

from cfg_jax import config_lib


def test_base_config_is_valid_and_fully_covered_by_rules():
  config = config_lib.base_config()
  config_lib.validate(config)
  assert set(config_lib.flatten(config)) == set(config_lib.RULES)


@pytest.mark.parametrize("field,value", [
    ("seed", -1),
    ("data.image_size", 0), ("data.channels", 2), ("data.num_classes", 0),
    ("data.toy2d_std", 0.),
    ("model.name", "resnet"), ("model.ch", 0), ("model.ch_mult", ()), ("model.ch_mult", (1, 0)),
    ("model.num_head_channels", 0), ("model.dropout", 1.), ("model.dtype", "float16"),
    ("model.logsnr_emb_ch", 7), ("model.logsnr_emb_ch", -2), ("model.label_emb_std", 0.),
    ("model.w_emb_ch", 7), ("model.w_emb_ch", -2),
    ("training.lr_schedule", "linear"),
    ("diffusion.logsnr_min", math.nan), ("diffusion.prediction", "score"),
    ("training.num_steps", 0), ("training.p_uncond", 1.5), ("training.p_uncond", -0.1),
    ("training.learning_rate", 0.), ("training.learning_rate", math.inf),
    ("training.warmup_steps", -1), ("training.grad_clip_norm", 0.), ("training.ema_decay", 1.5),
    ("training.adam_b2", 1.), ("training.checkpoint_every", 0), ("training.batch_size", True),
    ("sampling.v", 1.2), ("sampling.num_steps", 0), ("sampling.w", ()),
    ("sampling.w", (0., math.nan)), ("sampling.sampler", "euler"),
    ("sampling.guidance_interval", (1.,)), ("sampling.guidance_interval", (2., 1.)),
    ("sampling.guidance_interval", (0., math.inf)),
])
def test_each_bad_field_is_named_with_what_is_allowed(field, value):
  config = config_lib.base_config()
  group, _, name = field.rpartition(".")
  (config[group] if group else config)[name] = value
  with pytest.raises(ValueError, match=rf"config\.{field}=.* is invalid: it must be "):
    config_lib.validate(config)


def test_type_changes_are_refused_by_configdict():
  config = config_lib.base_config()
  with pytest.raises(TypeError, match="seed"):
    config.seed = 1.5


def test_unknown_and_missing_fields():
  config = config_lib.base_config()
  config.training.p_uncnod = 0.2
  with pytest.raises(ValueError, match=r"Unknown config field\(s\) \['config.training.p_uncnod'\]"):
    config_lib.validate(config)
  config = config_lib.base_config()
  del config.sampling["v"]
  with pytest.raises(ValueError, match=r"Missing config field\(s\) \['config.sampling.v'\]"):
    config_lib.validate(config)


@pytest.mark.parametrize("change,num_devices,match", [
    (dict(training=dict(batch_size=6)), 4, r"config.training.batch_size=6 must be divisible by the number of devices \(4\)"),
    (dict(data=dict(image_size=30)), 1, r"config.data.image_size=30 must be divisible by 4"),
    (dict(model=dict(attn_resolutions=(12,))), 1, r"attn_resolutions has 12"),
    (dict(model=dict(num_heads=3)), 1, r"does not split into whole heads"),
    (dict(diffusion=dict(logsnr_min=5., logsnr_max=5.)), 1, r"logsnr_min=5.0 must be <"),
    (dict(model=dict(name="mlp")), 1, r"config.model.name='mlp' does not fit"),
    (dict(model=dict(name="classifier", w_emb_ch=16)), 1,
     r"config.model.w_emb_ch=16 must be 0 for config.model.name='classifier': only the "
     r"ε-networks \('unet', 'mlp'\) take the guidance weight w"),
    (dict(training=dict(lr_schedule="cosine", num_steps=500, warmup_steps=500)), 1,
     r"config.training.warmup_steps=500 must be below config.training.num_steps=500"),
])
def test_relations_between_fields(change, num_devices, match):
  config = config_lib.base_config()
  for group, values in change.items():
    config[group].update(values)
  with pytest.raises(ValueError, match=match):
    config_lib.validate(config, num_devices=num_devices)


def test_load_config_file(tmp_path):
  config = config_lib.load_config_file(pathlib.Path(__file__).parents[1] / "configs" / "mnist.py")
  config_lib.validate(config, num_devices=1)
  with pytest.raises(FileNotFoundError, match=r"--config=.*nope\.py does not exist"):
    config_lib.load_config_file(tmp_path / "nope.py")


def _data(**data):
  config = config_lib.base_config()
  config.data.update(data)
  return config


def test_example_shape_needs_no_data():
  assert config_lib.example_shape(_data()) == (32, 32, 1)
  assert config_lib.example_shape(_data(image_size=64, channels=3)) == (64, 64, 3)
  assert config_lib.example_shape(_data(source="toy2d")) == (2,)
  assert config_lib.example_shape(_data(source="folder:/does/not/exist")) == (32, 32, 1)
