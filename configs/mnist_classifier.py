"""The noisy classifier p_φ(c | z_λ, λ) on the mnist5k digits, for classifier guidance.

On the 28x28 digits, as configs/mnist.py samples them (a classifier guides only a model of
its own image size): an ADM trunk of 16/32/32 channels with attention at 14x14 and two
residual blocks per level, then attention pooling at 7x7. Training follows ADM's classifier
(AdamW 3e-4, weight decay 0.05) at a CPU batch size.
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.update(source="mnist5k", image_size=28, channels=1, num_classes=10)
  config.model.update(name="classifier", ch=16, num_res_blocks=2, ch_mult=(1, 2, 2),
                      attn_resolutions=(14,), num_head_channels=32, dropout=0.,
                      resblock_updown=True, skip_rescale=False, dtype="float32")
  config.training.update(num_steps=2000, batch_size=64, learning_rate=3e-4, warmup_steps=100,
                         weight_decay=0.05, checkpoint_every=500, log_every=50)
  return config
