"""The noisy classifier p_φ(c | z_λ, λ) of ADM at 128x128 for classifier guidance (43M in ADM).

ADM's classifier: width 128, 2 residual blocks per level, attention at 32, 16 and 8 with
64 channels per head, attention pooling at 8x8. Training follows the classifier flags
of ADM's README (AdamW 3e-4, weight decay 0.05, batch 256, 300k steps).
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.update(source="imagenet2012", image_size=128, channels=3, num_classes=1000,
                     random_flip=True, resize=True)
  config.model.update(name="classifier", ch=128, num_res_blocks=2, ch_mult=(1, 1, 2, 3, 4),
                      attn_resolutions=(32, 16, 8), num_head_channels=64, dropout=0.,
                      resblock_updown=True, skip_rescale=False, dtype="bfloat16")
  config.training.update(num_steps=300_000, batch_size=256, learning_rate=3e-4, warmup_steps=0,
                         weight_decay=0.05, checkpoint_every=10_000, log_every=1000)
  return config
