"""Prints a model summary: `python -m cfg_jax.models --config=configs/imagenet64.py`.

Parameter count and per-resolution activation shapes through `jax.eval_shape`: no
memory for the weights, seconds on a laptop for any preset.
"""
from absl import app
from absl import flags
from ml_collections import config_flags

from cfg_jax import config_lib
from cfg_jax.models import summary

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Path to a config file (configs/<name>.py).", lock_config=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  config_lib.validate(_CONFIG.value)
  print(summary.summarize(_CONFIG.value))


if __name__ == "__main__":
  flags.mark_flags_as_required(["config"])
  app.run(main)
