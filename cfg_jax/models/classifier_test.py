"""Tests of the noisy classifier p_φ(c | z_λ, λ) on a tiny config."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import models
from cfg_jax import test_configs


@pytest.fixture(scope="module")
def setup(random_like):
  config = test_configs.tiny_model("classifier")
  model = models.create_model(config)
  params = random_like(models.param_shapes(model, config))
  z = jax.random.normal(jax.random.key(1), (3, 16, 16, 3))
  return config, model, params, z


@functools.partial(jax.jit, static_argnames="model")
def _logits(model, params, z, logsnr):
  return model.apply({"params": params}, z, logsnr, train=False)


def test_logits_depend_on_logsnr_and_are_float32_in_bfloat16(setup):
  config, model, params, z = setup
  logsnr = jnp.array([-5., 0., 5.])
  logits = _logits(model, params, z, logsnr)
  chex.assert_shape(logits, (3, config.data.num_classes))
  chex.assert_type(logits, jnp.float32)
  chex.assert_tree_all_finite(logits)
  assert not np.allclose(logits, _logits(model, params, z, logsnr + 1.))
  logits16 = _logits(model.clone(dtype=jnp.bfloat16), params, z, logsnr)
  chex.assert_type(logits16, jnp.float32)
  assert np.linalg.norm(logits16 - logits) / np.linalg.norm(logits) < 0.03


def test_is_the_unet_trunk_with_attention_pooling_at_the_last_resolution(setup):
  _, _, params, _ = setup
  unet_config = test_configs.tiny_model("unet")
  unet = models.param_shapes(models.create_model(unet_config), unet_config)
  trunk = {k for k in unet if k.startswith(("conv_in", "down_", "mid_", "logsnr_emb"))}
  assert set(params) == trunk | {"out_norm", "attn_pool"}  # no class embedding, no up path
  chex.assert_shape(params["attn_pool"]["pos_emb"], (8 * 8 + 1, 16))
  chex.assert_shape(params["attn_pool"]["proj_out"]["kernel"], (16, 3))


def test_make_apply_fn_refuses_the_classifier(setup):
  with pytest.raises(TypeError, match="Classifier"):
    models.make_apply_fn(setup[1])
