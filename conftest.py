"""Pytest set-up shared by every test: hypothesis settings for jit-compiling tests."""
import hypothesis

# A first call compiles, so per-example deadlines measure XLA, not the property.
hypothesis.settings.register_profile("cfg_jax", deadline=None, max_examples=30,
                                     derandomize=True)
hypothesis.settings.load_profile("cfg_jax")
