"""Guided distillation of the mnist preset (python -m cfg_jax.distill).

The student is configs/mnist.py's UNet with a 64-wide w embedding, trained for w in [0, 4]:
stage 1 matches the guided teacher in one pass; stage 2 halves 32 DDIM steps to 16, 8, 4
and 2, one round each.
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.distill_base_config()
  config.distill.update(w_min=0., w_max=4., w_emb_ch=64, start_steps=32, target_steps=2,
                        stage1_steps=2000, round_steps=1000)
  config.training.update(batch_size=64, learning_rate=2e-4, warmup_steps=100,
                         ema_decay=0.999, checkpoint_every=250, log_every=50, sample_every=1000)
  return config
