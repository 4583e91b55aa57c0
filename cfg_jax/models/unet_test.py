"""Tests of the UNet ε-network on a tiny config: shapes, dropout, the null label, precision."""
import functools

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import models
from cfg_jax import sampling
from cfg_jax import test_configs

B = 4


@pytest.fixture(scope="module")
def setup(random_like):
  """(config, model, params with every layer random, inputs) of the tiny UNet."""
  config = test_configs.tiny_model("unet")
  model = models.create_model(config)
  params = random_like(models.param_shapes(model, config))
  z = jax.random.normal(jax.random.key(1), (B, 16, 16, 3))
  logsnr = jnp.array([-15., -2., 3., 12.])
  labels = jnp.array([0, 1, 2, 3], jnp.int32)  # 3 = num_classes = ∅
  return config, model, params, (z, logsnr, labels)


@functools.partial(jax.jit, static_argnames=("model", "train"))
def _apply(model, params, z, logsnr, labels, rng=None, *, train=False):
  rngs = {"dropout": rng} if rng is not None else {}
  return model.apply({"params": params}, z, logsnr, labels, train=train, rngs=rngs)


def test_output_is_float32_eps_of_z_shape_and_zero_at_init(setup):
  config, model, _, inputs = setup
  params = models.init_params(model, jax.random.key(0), config)
  eps = _apply(model, params, *inputs)
  chex.assert_shape(eps, inputs[0].shape)
  chex.assert_type(eps, jnp.float32)
  np.testing.assert_array_equal(eps, 0.)  # the output convolution starts at zero


def test_deterministic_and_dropout_only_in_training(setup):
  _, model, params, inputs = setup
  eval_out = _apply(model, params, *inputs)
  chex.assert_tree_all_finite(eval_out)
  np.testing.assert_array_equal(eval_out, _apply(model, params, *inputs))
  train_a = _apply(model, params, *inputs, jax.random.key(5), train=True)
  np.testing.assert_array_equal(train_a, _apply(model, params, *inputs, jax.random.key(5),
                                                train=True))
  assert not np.allclose(train_a, _apply(model, params, *inputs, jax.random.key(6), train=True))
  assert not np.allclose(train_a, eval_out)
  no_dropout = model.clone(dropout=0.)
  np.testing.assert_allclose(_apply(no_dropout, params, *inputs, jax.random.key(5), train=True),
                             eval_out, rtol=1e-6, atol=1e-6)


def test_output_depends_on_logsnr_and_label(setup):
  _, model, params, (z, logsnr, labels) = setup
  out = _apply(model, params, z, logsnr, labels)
  assert not np.allclose(out, _apply(model, params, z, logsnr + 1., labels))
  assert not np.allclose(out, _apply(model, params, z, logsnr, (labels + 1) % 4))


def test_null_label_row_is_used_and_receives_gradient(setup):
  config, model, params, (z, logsnr, _) = setup
  null = config.data.num_classes
  chex.assert_shape(params["label_emb"]["embedding"], (null + 1, 4 * config.model.ch))
  labels = jnp.full((B,), null, jnp.int32)
  grads = jax.grad(lambda p: jnp.sum(_apply(model, p, z, logsnr, labels) ** 2))(params)
  row_norms = np.linalg.norm(grads["label_emb"]["embedding"], axis=-1)
  assert row_norms[null] > 0.
  np.testing.assert_array_equal(row_norms[:null], 0.)


def test_bfloat16_compute_is_close_to_float32(setup):
  _, model, params, inputs = setup
  out32 = _apply(model, params, *inputs)
  bf16 = model.clone(dtype=jnp.bfloat16)
  out16 = _apply(bf16, params, *inputs)
  chex.assert_type(out16, jnp.float32)
  rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
  assert rel < 0.03, rel
  shapes = jax.eval_shape(lambda: bf16.init(jax.random.key(0), *inputs, train=False))
  assert {x.dtype for x in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("remat", [False, True])
def test_bfloat16_torso_with_float32_softmax_norm_statistics_embedding_and_head(
    setup, remat, equations):
  _, model, params, inputs = setup
  bf16 = model.clone(dtype=jnp.bfloat16, remat=remat)
  apply = lambda p: bf16.apply({"params": p}, *inputs, train=False, capture_intermediates=True,
                               mutable=["intermediates"])
  # Every module's output: the blocks, their convolutions, dense layers and norms in
  # bfloat16; the λ/class embedding and the head in float32.
  _, state = jax.eval_shape(apply, params)
  outputs = {path[:-1]: value[0].dtype for path, value in
             flax.traverse_util.flatten_dict(state["intermediates"]).items()}
  torso = {path: dtype for path, dtype in outputs.items()
           if path and path[0].startswith(("conv_in", "down_", "mid_", "up_"))}
  assert len(torso) > 50 and set(torso.values()) == {jnp.dtype(jnp.bfloat16)}
  for path in [(), ("logsnr_emb",), ("label_emb",), ("out_norm",), ("out_conv",)]:
    assert outputs[path] == jnp.float32, path
  # Inside them: bfloat16 convolutions but the head's; float32 GroupNorm statistics (one
  # rsqrt per GroupNorm) and softmax; bfloat16 attention matmuls with float32 logits.
  eqns = list(equations(jax.make_jaxpr(apply)(params).jaxpr))
  by_name = lambda name: [e for e in eqns if e.primitive.name == name]
  in_dtype = lambda e: e.invars[0].aval.dtype
  convs = [in_dtype(e) for e in by_name("conv_general_dilated")]
  assert convs.count(jnp.float32) == 1 and convs.count(jnp.bfloat16) == len(convs) - 1
  norms = [path for path in outputs if path and path[-1].startswith(("norm", "out_norm"))]
  assert [in_dtype(e) for e in by_name("rsqrt")] == [jnp.float32] * len(norms)
  softmax = [e for e in by_name("exp") if e.invars[0].aval.ndim >= 4]
  assert softmax and {in_dtype(e) for e in by_name("exp")} == {jnp.dtype(jnp.float32)}
  assert any(in_dtype(e) == jnp.bfloat16 and e.outvars[0].aval.dtype == jnp.float32
             for e in by_name("dot_general"))


def test_conv_resampling_and_skip_rescale(setup):
  _, model, _, inputs = setup
  variant = model.clone(resblock_updown=False, skip_rescale=True)
  out, variables = jax.eval_shape(
      lambda: variant.init_with_output(jax.random.key(0), *inputs, train=False))
  chex.assert_shape(out, inputs[0].shape)
  chex.assert_shape(variables["params"]["down_0_downsample"]["kernel"], (3, 3, 8, 8))


def test_rejects_bad_inputs(setup):
  _, model, params, (z, logsnr, labels) = setup
  with pytest.raises(ValueError, match="divisible by 2"):
    model.apply({"params": params}, z[:, :15, :15], logsnr, labels, train=False)
  with pytest.raises(AssertionError):
    model.apply({"params": params}, z, logsnr[:2], labels, train=False)
  with pytest.raises(AssertionError):
    model.apply({"params": params}, z, logsnr, labels.astype(jnp.float32), train=False)


def test_w_is_required_by_a_w_unet_and_refused_by_one_without(setup):
  _, model, params, (z, logsnr, labels) = setup
  w = jnp.full((B,), 2.)
  with pytest.raises(ValueError, match=r"has no w input \(w_emb_ch=0\), but w was given"):
    model.apply({"params": params}, z, logsnr, labels, w, train=False)
  w_model = model.clone(w_emb_ch=16)
  with pytest.raises(ValueError, match=r"takes the guidance weight w \(w_emb_ch=16\); pass w"):
    w_model.apply({"params": params}, z, logsnr, labels, train=False)
  init = lambda w: jax.eval_shape(lambda: w_model.init(jax.random.key(0), z, logsnr, labels, w,
                                                       train=False))
  chex.assert_shape(init(w)["params"]["w_emb"]["dense_0"]["kernel"], (16, 4 * 8))
  for bad_w in (w[:2], w.astype(jnp.int32)):  # w is float [B]
    with pytest.raises(AssertionError):
      init(bad_w)


def test_satisfies_the_sampler_apply_contract(setup):
  config, model, params, _ = setup
  apply_fn = models.make_apply_fn(model)
  sample_fn = sampling.make_sample_fn(apply_fn, shape=(16, 16, 3), num_steps=3,
                                      null_label=config.data.num_classes)
  x = sample_fn(params, jax.random.key(0), jnp.array([0, 2], jnp.int32), 1.)
  chex.assert_shape(x, (2, 16, 16, 3))
  chex.assert_tree_all_finite(x)


@pytest.mark.parametrize("name", ["unet", "mlp"])
def test_logsnr_embedding_width_and_class_table_init(name):
  config = test_configs.tiny_model(name)
  config.model.update(logsnr_emb_ch=24, label_emb_std=2.)
  params = models.init_params(models.create_model(config), jax.random.key(0), config)
  assert params["logsnr_emb"]["dense_0"]["kernel"].shape[0] == 24
  table = np.asarray(params["label_emb"]["embedding"])
  np.testing.assert_allclose(table.std(), 2., rtol=0.25)
  config.model.logsnr_emb_ch = 0  # tied to the base width
  shapes = models.param_shapes(models.create_model(config), config)
  base = config.model.ch if name == "unet" else config.model.mlp_hidden
  assert shapes["logsnr_emb"]["dense_0"]["kernel"].shape[0] == base
