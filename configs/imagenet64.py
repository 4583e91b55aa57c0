"""ImageNet 64x64 (Ho & Salimans): the ADM-64 UNet, 296M parameters in ADM.

Training is ADM-64's (batch 2048, Adam at a constant 3e-4, EMA 0.9999) for the paper's
400k steps; sampling uses the paper's v = 0.3 and T = 256.

bfloat16 compute with remat: the backward pass keeps about 350 MiB per image without
remat and 56 MiB with it (jax's saved residuals), so the paper's batch needs remat below
32 devices (2048 is 256 per device on 8 GPUs, 128 per chip on a v4-32). Remat costs 20%
more FLOPs per step (XLA's count): where the per-device batch fits without it, set
--config.model.remat=False.
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.update(source="imagenet_resized/64x64", image_size=64, channels=3,
                     num_classes=1000, random_flip=True)
  config.model.update(name="unet", ch=192, num_res_blocks=3, ch_mult=(1, 2, 3, 4),
                      attn_resolutions=(32, 16, 8), num_head_channels=64, dropout=0.1,
                      resblock_updown=True, skip_rescale=False, dtype="bfloat16",
                      remat=True)
  config.training.update(num_steps=400_000, batch_size=2048, p_uncond=0.1, learning_rate=3e-4,
                         warmup_steps=0, ema_decay=0.9999, checkpoint_every=10_000,
                         log_every=1000, sample_every=20_000)
  config.sampling.update(v=0.3, num_steps=256, w=(0., 0.1, 0.3, 1., 4.))
  return config
