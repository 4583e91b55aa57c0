"""Tests of create_model and the presets: parameter counts (via eval_shape), shapes, remat."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import config_lib
from cfg_jax import models
from cfg_jax import test_configs
from cfg_jax.models import factory

PRESETS = ("mnist", "toy2d", "imagenet64", "imagenet128", "mnist_classifier",
           "imagenet64_classifier", "imagenet128_classifier")

# ADM's counts (Dhariwal & Nichol's hyperparameter table), whose networks Ho & Salimans
# reuse. The ε-networks differ from ADM's by a row more in the class table (∅, +4·ch) and
# no learned-variance head (its 3 output channels of the last 3x3 convolution, -(3·9·C + 3)).
PAPER_COUNTS = {"imagenet64": 296e6, "imagenet128": 422e6, "imagenet64_classifier": 65e6,
                "imagenet128_classifier": 43e6}
EXACT_COUNTS = {"imagenet64": 295_900_035, "imagenet128": 421_523_715,
                "imagenet64_classifier": 65_438_568, "imagenet128_classifier": 42_568_040}


@pytest.fixture(scope="module")
def build():
  """name -> (config, model, param shapes) of a preset, traced once per module."""
  @functools.cache
  def build_preset(name):
    config = test_configs.preset(name)
    model = models.create_model(config)
    return config, model, models.param_shapes(model, config)
  return build_preset


def _adm_count(count, config):
  """Our count as ADM would have it: no ∅ row, the learned-variance head."""
  if config.model.name != "unet":
    return count
  head = 3 * 9 * config.model.ch * config.model.ch_mult[0] + 3
  return count - 4 * config.model.ch + head


@pytest.mark.parametrize("name", sorted(PAPER_COUNTS))
def test_paper_parameter_counts_without_allocating(name, build):
  config, _, params = build(name)
  count = models.count_params(params)
  assert count == EXACT_COUNTS[name]
  assert abs(count / PAPER_COUNTS[name] - 1.) < 0.03
  assert abs(_adm_count(count, config) / PAPER_COUNTS[name] - 1.) < 0.03


@pytest.mark.parametrize("model, classifier", [("mnist", "mnist_classifier"),
                                               ("imagenet64", "imagenet64_classifier"),
                                               ("imagenet128", "imagenet128_classifier")])
def test_each_classifier_preset_classifies_what_its_model_samples(model, classifier):
  model, classifier = test_configs.preset(model), test_configs.preset(classifier)
  assert config_lib.example_shape(classifier) == config_lib.example_shape(model)
  assert classifier.data.num_classes == model.data.num_classes
  assert classifier.data.source == model.data.source


@pytest.mark.parametrize("name", PRESETS)
def test_every_preset_is_valid_and_gives_the_right_output_shape(name, build):
  config, model, params = build(name)
  config_lib.validate(config)
  expected_type = {"unet": models.UNet, "mlp": models.MLP, "classifier": models.Classifier}
  assert type(model) is expected_type[config.model.name]
  inputs = models.dummy_inputs(model, config, batch_size=2)
  out = jax.eval_shape(lambda p: model.apply({"params": p}, *inputs, train=False), params)
  if config.model.name == "classifier":
    chex.assert_shape(out, (2, config.data.num_classes))
  else:
    chex.assert_shape(out, inputs[0].shape)
    assert params["label_emb"]["embedding"].shape[0] == config.data.num_classes + 1
  assert out.dtype == jnp.float32
  assert {p.dtype for p in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}


def test_dummy_inputs():
  config = test_configs.tiny_model("unet")
  z, logsnr, labels = models.dummy_inputs(models.create_model(config), config, batch_size=3)
  chex.assert_shape([z, logsnr, labels], [(3, 16, 16, 3), (3,), (3,)])
  assert labels.dtype == jnp.int32


@pytest.mark.parametrize("field,value,match", [("name", "resnet", "model.name"),
                                               ("dtype", "float16", "model.dtype")])
def test_create_model_rejects_unknown_names(field, value, match):
  config = config_lib.base_config()
  config.model[field] = value
  with pytest.raises(ValueError, match=match):
    models.create_model(config)


def test_every_model_and_dtype_name_of_the_schema_builds():
  assert factory.DTYPES == {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
  built = {}
  for name in config_lib.MODEL_NAMES:
    config = test_configs.tiny_model(name)
    built[name] = type(models.create_model(config)).__name__
    assert models.is_classifier(config) == (name == "classifier")
  assert built == {"unet": "UNet", "mlp": "MLP", "classifier": "Classifier"}


# The tiny ε-networks' parameter counts: a default config (no w input) grows none.
TINY_COUNTS = {"unet": 53_403, "mlp": 3_026}


@pytest.mark.parametrize("name", sorted(TINY_COUNTS))
def test_a_default_network_takes_no_w_and_a_w_network_only_adds_w_emb(name):
  config = test_configs.tiny_model(name)
  model = models.create_model(config)
  shapes = models.param_shapes(model, config)
  assert not models.takes_w(model) and "w_emb" not in shapes
  assert models.count_params(shapes) == TINY_COUNTS[name]
  assert len(models.dummy_inputs(model, config)) == 3
  config.model.w_emb_ch = 16
  config_lib.validate(config)
  w_model = models.create_model(config)
  w_shapes = models.param_shapes(w_model, config)
  assert models.takes_w(w_model) and len(models.dummy_inputs(w_model, config)) == 4
  assert {k: v for k, v in w_shapes.items() if k != "w_emb"} == shapes
  assert w_shapes["w_emb"]["dense_0"]["kernel"].shape[0] == 16


@pytest.mark.parametrize("name", ["unet", "mlp"])
def test_a_w_network_copied_from_one_without_w_starts_equal_to_it_for_every_w(
    name, random_like):
  config = test_configs.tiny_model(name)
  teacher = models.create_model(config)
  params = random_like(models.param_shapes(teacher, config))
  config.model.w_emb_ch = 16
  student = models.create_model(config)
  fresh = models.init_params(student, jax.random.key(0), config)
  copied = fresh | params  # all but w_emb, which stays as initialised
  z = jax.random.normal(jax.random.key(1), (4,) + config_lib.example_shape(config))
  logsnr, labels = jnp.array([-15., -2., 3., 12.]), jnp.array([0, 1, 2, 3], jnp.int32)
  eps = jax.jit(models.make_apply_fn(teacher))(params, z, logsnr, labels)
  apply_fn = jax.jit(models.make_apply_fn(student))  # apply_fn(params, z, logsnr, labels, w)
  for w in ([0., 0., 0., 0.], [0., 0.5, 2., 4.], [7.5, 3., 1., 0.1]):
    np.testing.assert_array_equal(apply_fn(copied, z, logsnr, labels, jnp.array(w)), eps)
  copied["w_emb"] = random_like(fresh["w_emb"], seed=1)
  w = jnp.array([0., 0.5, 2., 4.])
  out, out_shifted = (apply_fn(copied, z, logsnr, labels, v) for v in (w, w + 1.))
  chex.assert_shape(out, z.shape)
  chex.assert_tree_all_finite(out)
  assert np.abs(out - out_shifted).reshape(4, -1).max(-1).min() > 0.  # every example moves


def test_count_params():
  tree = {"a": jnp.zeros((2, 3)), "b": {"c": jax.ShapeDtypeStruct((4,), jnp.float32)}}
  assert models.count_params(tree) == 10


def _residual_bytes(fn, params):
  """Bytes that the backward pass of fn keeps from its forward: the leaves of jax.vjp's
  function, through eval_shape (nothing is computed)."""
  vjp_fn = jax.eval_shape(lambda p: jax.vjp(fn, p)[1], params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(vjp_fn))


@pytest.mark.parametrize("name", ["unet", "mlp"])  # the classifier has the UNet's blocks
def test_remat_keeps_parameters_loss_and_gradients_and_keeps_fewer_activations(
    name, random_like):
  config = test_configs.tiny_model(name)
  plain = models.create_model(config)
  config.model.remat = True
  config_lib.validate(config)
  remat = models.create_model(config)
  shapes = models.param_shapes(plain, config)
  assert models.param_shapes(remat, config) == shapes  # a checkpoint fits either
  params = random_like(shapes)
  inputs = [jax.random.normal(jax.random.key(1), x.shape) if x.dtype == jnp.float32 else x
            for x in models.dummy_inputs(plain, config, batch_size=4)]

  def loss(model, p):  # train=True: dropout must draw the same masks when recomputed
    out = model.apply({"params": p}, *inputs, train=True, rngs={"dropout": jax.random.key(2)})
    return jnp.mean(jnp.square(out))

  (loss0, grads0), (loss1, grads1) = (
      jax.jit(jax.value_and_grad(functools.partial(loss, m)))(params) for m in (plain, remat))
  np.testing.assert_allclose(loss1, loss0, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads1, grads0)
  kept = [_residual_bytes(functools.partial(loss, m), params) for m in (plain, remat)]
  assert kept[1] < 0.7 * kept[0], kept  # the tiny UNet keeps 7x fewer bytes, the MLP 1.7x
