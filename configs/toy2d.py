"""A 2-D Gaussian mixture, one component per class: CFG at a glance, in minutes on a CPU.

ε_θ is the residual MLP (`cfg_jax.models.MLP`); data.image_size is unused. The points
are not in [-1, 1], so x̃ is not clipped when sampling.
"""
from cfg_jax import config_lib


def get_config():
  config = config_lib.base_config()
  config.data.update(source="toy2d", num_classes=4)
  config.model.update(name="mlp", mlp_hidden=128, mlp_depth=3, dropout=0.)
  config.training.update(num_steps=10_000, batch_size=256, p_uncond=0.1, learning_rate=1e-3,
                         warmup_steps=100, ema_decay=0.999, checkpoint_every=2000,
                         log_every=200, sample_every=2000)
  config.sampling.update(v=0.3, num_steps=128, w=(0., 1., 4.), clip_x=False,
                         num_per_class=256)
  return config
