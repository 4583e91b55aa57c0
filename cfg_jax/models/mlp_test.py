"""Tests of the MLP ε-network for 2-D data."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import models
from cfg_jax import sampling
from cfg_jax import test_configs


@pytest.fixture(scope="module")
def setup(random_like):
  config = test_configs.tiny_model("mlp")
  model = models.create_model(config)
  params = random_like(models.param_shapes(model, config))
  return config, model, params


def test_shapes_null_label_gradient_and_dropout(setup):
  config, model, params = setup
  null = config.data.num_classes
  z = jax.random.normal(jax.random.key(0), (5, 2))
  logsnr = jnp.linspace(-10., 10., 5)
  labels = jnp.array([0, 1, 2, null, null], jnp.int32)

  @jax.jit
  def run(params, rng):
    apply = lambda p, train: model.apply({"params": p}, z, logsnr, labels, train=train,
                                         rngs={"dropout": rng})
    grads = jax.grad(lambda p: jnp.sum(apply(p, False) ** 2))(params)
    return apply(params, False), apply(params, True), grads

  eps, eps_train, grads = run(params, jax.random.key(1))
  chex.assert_shape(eps, (5, 2))
  chex.assert_type(eps, jnp.float32)
  assert not np.allclose(eps, eps_train)
  rows = np.linalg.norm(grads["label_emb"]["embedding"], axis=-1)
  assert rows[null] > 0. and rows[0] > 0.


def test_zero_at_init_and_sampler_contract(setup):
  config, model, params = setup
  fresh = models.init_params(model, jax.random.key(0), config)
  np.testing.assert_array_equal(fresh["dense_out"]["kernel"], 0.)
  sample_fn = sampling.make_sample_fn(models.make_apply_fn(model), shape=(2,), num_steps=4,
                                      null_label=config.data.num_classes)
  x = sample_fn(params, jax.random.key(0), jnp.array([0, 1, 2], jnp.int32), 2.)
  chex.assert_shape(x, (3, 2))
  chex.assert_tree_all_finite(x)


def test_a_w_mlp_needs_w_and_trains_its_w_embedding_from_zero(setup):
  config, model, params = setup
  w_model = model.clone(w_emb_ch=8)
  z, logsnr = jnp.ones((3, 2)), jnp.zeros(3)
  labels, w = jnp.array([0, 1, config.data.num_classes], jnp.int32), jnp.array([0., 1., 4.])
  with pytest.raises(ValueError, match=r"takes the guidance weight w \(w_emb_ch=8\); pass w"):
    w_model.apply({"params": params}, z, logsnr, labels, train=False)
  fresh = w_model.init(jax.random.key(0), z, logsnr, labels, w, train=False)["params"]
  w_params = params | {"w_emb": fresh["w_emb"]}
  grads = jax.grad(lambda p: jnp.sum(w_model.apply({"params": p}, z, logsnr, labels, w,
                                                   train=False) ** 2))(w_params)
  # From zero, the last layer learns first; the first starts learning once it has moved.
  assert np.abs(grads["w_emb"]["dense_1"]["kernel"]).max() > 0.
  np.testing.assert_array_equal(grads["w_emb"]["dense_0"]["kernel"], 0.)
