"""The presets, installed as `cfg_jax.configs` (each file defines `get_config()`)."""
