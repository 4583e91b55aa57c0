"""Configs for the tests: the presets of configs/ and small variants that run in seconds on a CPU.

Tests that share a builder here also share its numbers, and with them their compiled
programs and caches; a test that needs other values passes them or changes its copy.
"""
from __future__ import annotations

import ml_collections

from cfg_jax import config_lib

preset = config_lib.preset


def with_data(**data) -> ml_collections.ConfigDict:
  """The defaults of `config_lib.base_config()` with these config.data fields."""
  config = config_lib.base_config()
  config.data.update(data)
  return config


def toy2d(**training) -> ml_collections.ConfigDict:
  """A toy2d run of a small MLP (3 classes, 2,048 points, 8 steps of batch 16), 4-step
  sampling; `training` overrides config.training fields."""
  config = with_data(source="toy2d", num_classes=3, toy2d_num_examples=2048)
  config.model.update(name="mlp", dropout=0.1, mlp_hidden=64, mlp_depth=2)
  config.training.update(num_steps=8, batch_size=16, log_every=4, checkpoint_every=4,
                         sample_every=1000, warmup_steps=2, learning_rate=1e-3)
  config.training.update(training)
  config.sampling.update(num_steps=4, num_per_class=4, clip_x=False, w=(0., 1.))
  return config


def small_toy2d_preset() -> ml_collections.ConfigDict:
  """configs/toy2d.py with a small model, batch, dataset and sampler; every step is logged
  and checkpointed."""
  config = preset("toy2d")
  config.data.toy2d_num_examples = 1024
  config.model.update(mlp_hidden=32, mlp_depth=2)
  config.training.update(batch_size=16, warmup_steps=1, log_every=1, checkpoint_every=1,
                         sample_every=1000)
  # The sample grid at the last step runs on every process: keep it one small batch.
  config.sampling.update(num_steps=2, w=(1.,), num_per_class=2)
  return config


def tiny_model(name: str) -> ml_collections.ConfigDict:
  """A validated config of model `name` (unet, classifier or mlp) that compiles in seconds."""
  config = config_lib.base_config()
  if name == "mlp":
    config.data.update(source="toy2d", num_classes=3)
    config.model.update(name="mlp", mlp_hidden=16, mlp_depth=2, dropout=0.1)
  else:
    config.data.update(image_size=16, channels=3, num_classes=3)
    config.model.update(name=name, ch=8, num_res_blocks=1, ch_mult=(1, 2), attn_resolutions=(8,),
                        num_heads=2, dropout=0.1, skip_rescale=False)
  config_lib.validate(config)
  return config


def tiny_image_run() -> ml_collections.ConfigDict:
  """An mnist5k run at 16x16 of a two-level UNet of width 8 without attention."""
  config = with_data(image_size=16)
  config.model.update(ch=8, num_res_blocks=1, ch_mult=(1, 2), attn_resolutions=(), num_heads=1,
                      dropout=0.)
  return config


def tiny_eval_classifier(**training) -> ml_collections.ConfigDict:
  """configs/mnist_eval_classifier.py with one stage of 8 channels, 16 features, no
  dropout and batch 32; `training` overrides config.training fields."""
  config = preset("mnist_eval_classifier")
  config.model.update(channels=(8,), features=16, dropout=0.)
  config.training.update(batch_size=32)
  config.training.update(training)
  return config
