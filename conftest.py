"""Pytest set-up shared by every test: compilation cache and hypothesis settings."""
import os
import tempfile

# Compiled programs are shared between tests and the CLI subprocesses they start.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "cfg_jax_test_xla_cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# epath picks its gs:// backend once per process: once a test imports TensorFlow (tfds)
# it would pick tf.io.gfile, which tests/gcs_paths_test.py's fake bucket cannot intercept.
os.environ.setdefault("EPATH_USE_TF", "false")

import hypothesis  # noqa: E402  (imports after the environment above)
import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])

# A first call compiles, so per-example deadlines measure XLA, not the property.
hypothesis.settings.register_profile("cfg_jax", deadline=None, max_examples=30,
                                     derandomize=True)
hypothesis.settings.load_profile("cfg_jax")
