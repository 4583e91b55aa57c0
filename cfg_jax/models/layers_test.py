"""Tests of the building blocks: embeddings, AdaGN residual blocks, attention, pooling."""
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax.models import layers


def _init(module, *args, **kwargs):
  """Jitted init_with_output: one compile instead of one per eager op."""
  return jax.jit(functools.partial(module.init_with_output, **kwargs))(jax.random.key(2), *args)


def test_sinusoidal_embedding():
  emb = layers.sinusoidal_embedding(jnp.array([0., 500.]), 8)
  chex.assert_shape(emb, (2, 8))
  np.testing.assert_allclose(emb[0], [1.] * 4 + [0.] * 4)
  np.testing.assert_allclose(emb[1, 0], np.cos(500.), rtol=1e-5)  # the highest frequency is 1
  with pytest.raises(ValueError, match="even"):
    layers.sinusoidal_embedding(jnp.zeros(2), 7)


def test_logsnr_embedding_is_finite_for_any_logsnr():
  emb, _ = _init(layers.LogSNREmbedding(8, 32), jnp.array([-1e4, -20., 0., 20., 1e4]))
  chex.assert_shape(emb, (5, 32))
  chex.assert_tree_all_finite(emb)


def test_w_embedding_is_zero_at_init_for_every_w_and_depends_on_w_once_trained(random_like):
  assert 4. * layers.W_SCALE == layers.TIME_SCALE  # w ∈ [0, 4] spans the phases of t ∈ [0, 1]
  w = jnp.array([0., 0.5, 2., 4.])
  module = layers.WEmbedding(8, 16)
  emb, variables = _init(module, w)
  chex.assert_shape(emb, (4, 16))
  np.testing.assert_array_equal(emb, 0.)
  np.testing.assert_array_equal(variables["params"]["dense_1"]["bias"], 0.)
  emb = module.apply(random_like(variables), w)
  chex.assert_tree_all_finite(emb)
  assert min(np.abs(emb[i] - emb[j]).max() for i in range(4) for j in range(i)) > 1e-3


class _GroupNorm(nn.Module):
  @nn.compact
  def __call__(self, x):
    return layers.group_norm(x, dtype=jnp.float32, name="norm")


@pytest.mark.parametrize("channels,groups", [(16, 4), (96, 24), (768, 32)])
def test_group_norm_is_adm_groupnorm32_from_128_channels(channels, groups):
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, channels))
  got, _ = _init(_GroupNorm(), x)
  g = np.asarray(x).reshape(2, 16, groups, channels // groups)
  ref = (g - g.mean((1, 3), keepdims=True)) / np.sqrt(g.var((1, 3), keepdims=True)
                                                      + layers.NORM_EPS)
  np.testing.assert_allclose(got, ref.reshape(x.shape), atol=1e-4)


def test_group_norm_computes_in_float32_for_bfloat16(equations):
  """Its only bfloat16 values are the input and the output: statistics, normalization,
  scale and bias are float32."""
  module = layers.GroupNorm(8, dtype=jnp.bfloat16)
  x = jnp.zeros((2, 8, 8, 32), jnp.bfloat16)
  params = jax.eval_shape(module.init, jax.random.key(0), x)
  jaxpr = jax.make_jaxpr(module.apply)(params, x).jaxpr
  bf16 = jnp.dtype(jnp.bfloat16)
  touches_bf16 = [e.primitive.name for e in equations(jaxpr)
                  if bf16 in {v.aval.dtype for v in (*e.invars, *e.outvars)}]
  assert touches_bf16 == ["convert_element_type"] * 2


@pytest.mark.parametrize("resample,resample_fn", [(None, lambda a: a), ("down", layers.downsample),
                                                  ("up", layers.upsample)])
def test_res_block_shapes_and_zero_init(resample, resample_fn):
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 8))
  emb = jax.random.normal(jax.random.key(1), (2, 32))
  wider, _ = _init(layers.ResBlock(16, resample=resample), x, emb, train=False)
  chex.assert_shape(wider, resample_fn(x).shape[:3] + (16,))
  # The residual branch starts at zero: a block that keeps the width is its skip path.
  out, _ = _init(layers.ResBlock(8, resample=resample), x, emb, train=False)
  np.testing.assert_allclose(out, resample_fn(x), atol=1e-6)


def test_res_block_uses_the_embedding_and_skip_rescale(random_like):
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 8))
  emb = jax.random.normal(jax.random.key(1), (2, 16))
  variables = random_like(jax.eval_shape(functools.partial(layers.ResBlock(8).init, train=False),
                                         jax.random.key(0), x, emb))
  apply = jax.jit(lambda e, rescale: layers.ResBlock(8, skip_rescale=rescale).apply(
      variables, x, e, train=False), static_argnums=1)
  out = apply(emb, False)
  assert not np.allclose(out, apply(2. * emb, False))
  np.testing.assert_allclose(apply(emb, True), out / np.sqrt(2.), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_heads,num_head_channels,expected",
                         [(4, -1, 4), (1, 64, 3), (4, 32, 6)])
def test_num_heads_for(num_heads, num_head_channels, expected):
  assert layers.num_heads_for(192, num_heads=num_heads,
                              num_head_channels=num_head_channels) == expected


def test_num_heads_for_rejects_uneven_heads():
  with pytest.raises(ValueError, match="num_head_channels=64"):
    layers.num_heads_for(96, num_heads=1, num_head_channels=64)
  with pytest.raises(ValueError, match="num_heads=5"):
    layers.num_heads_for(96, num_heads=5, num_head_channels=-1)


def test_attention_block_is_identity_at_init_and_permutation_equivariant(random_like):
  x = jax.random.normal(jax.random.key(0), (2, 4, 4, 16))
  block = layers.AttentionBlock(num_heads=2)
  out, variables = _init(block, x)
  np.testing.assert_allclose(out, x, atol=1e-6)
  apply = jax.jit(functools.partial(block.apply, random_like(variables)))
  perm = jax.random.permutation(jax.random.key(2), 16)
  permute = lambda a: a.reshape(2, 16, 16)[:, perm].reshape(a.shape)
  np.testing.assert_allclose(apply(permute(x)), permute(apply(x)), atol=1e-5)


def test_multi_head_attention_matches_a_per_head_softmax():
  qkv = jax.random.normal(jax.random.key(0), (1, 5, 3 * 4))
  out = layers.multi_head_attention(qkv, 2)
  q, k, v = np.split(np.asarray(qkv[0]), 3, axis=-1)
  for h in range(2):
    qh, kh, vh = (a[:, 2 * h:2 * h + 2] for a in (q, k, v))
    w = np.exp(qh @ kh.T / np.sqrt(2.))
    np.testing.assert_allclose(out[0, :, 2 * h:2 * h + 2], (w / w.sum(-1, keepdims=True)) @ vh,
                               rtol=1e-5, atol=1e-6)


def test_attention_pool():
  out, variables = _init(layers.AttentionPool(10, num_heads=2),
                         jax.random.normal(jax.random.key(0), (3, 8, 8, 16)))
  chex.assert_shape(out, (3, 10))
  chex.assert_shape(variables["params"]["pos_emb"], (65, 16))


def test_resampling_matches_pooling_and_repeat():
  x = jax.random.normal(jax.random.key(3), (2, 6, 4, 3))
  np.testing.assert_allclose(layers.downsample(x), nn.avg_pool(x, (2, 2), strides=(2, 2)),
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(layers.upsample(x),
                                jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2))
