"""ImageNet 128x128 (Ho & Salimans): the ADM-128 UNet, 422M parameters in ADM.

Training is ADM-128's (batch 256, Adam at a constant 1e-4, EMA 0.9999) for the paper's
2.7M steps; sampling uses the paper's v = 0.2 and T = 256.

bfloat16 compute with remat: the backward pass keeps about 1.1 GiB per image without
remat and 0.2 GiB with it (jax's saved residuals), so the paper's batch of 256 needs
remat on fewer than 8 GPUs of 80 GB or 16 TPU v4 chips. Remat costs 20% more FLOPs per
step (XLA's count): where the per-device batch fits without it, set
--config.model.remat=False.
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.update(source="imagenet2012", image_size=128, channels=3, num_classes=1000,
                     random_flip=True, resize=True)
  config.model.update(name="unet", ch=256, num_res_blocks=2, ch_mult=(1, 1, 2, 3, 4),
                      attn_resolutions=(32, 16, 8), num_heads=4, num_head_channels=-1,
                      dropout=0., resblock_updown=True, skip_rescale=False, dtype="bfloat16",
                      remat=True)
  config.training.update(num_steps=2_700_000, batch_size=256, p_uncond=0.1, learning_rate=1e-4,
                         warmup_steps=0, ema_decay=0.9999, checkpoint_every=10_000,
                         log_every=1000, sample_every=50_000)
  config.sampling.update(v=0.2, num_steps=256, w=(0., 0.3, 1., 4.))
  return config
