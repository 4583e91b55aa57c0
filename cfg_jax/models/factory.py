"""Builds the networks from a config and exposes them in the forms the rest of the code uses.

`create_model(config)` reads config.model (architecture, compute dtype, remat) and
config.data.num_classes; the shape of z is `config_lib.example_shape(config)`.
`make_apply_fn(model)` is the sampler's contract `apply_fn(params, z, logsnr, labels) -> ε`,
with a fifth argument w for a network that takes the guidance weight (`takes_w`).
`param_shapes` and `num_params` go through `jax.eval_shape`, so they cost no memory for
the weights.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cfg_jax import config_lib
from cfg_jax.models.classifier import Classifier
from cfg_jax.models.mlp import MLP
from cfg_jax.models.unet import UNet

Array = jax.Array
Params = Any
# The compute dtype of each name a config may give (config_lib.DTYPE_NAMES).
DTYPES = {name: jnp.dtype(name) for name in config_lib.DTYPE_NAMES}


def is_classifier(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` describes the noisy classifier p_φ(c | z_λ, λ), not an ε-network."""
  return config.model.name == "classifier"


def create_model(config: ml_collections.ConfigDict) -> nn.Module:
  """The `UNet`, `MLP` or `Classifier` named by config.model.name, for config.data."""
  m = config.model
  config_lib.check_field("model.name", m.name)
  config_lib.check_field("model.dtype", m.dtype)
  dtype = DTYPES[m.dtype]
  num_classes = config.data.num_classes
  if m.name == "mlp":
    return MLP(num_classes, hidden=m.mlp_hidden, depth=m.mlp_depth, dropout=m.dropout,
               dtype=dtype, remat=m.remat, logsnr_emb_ch=m.logsnr_emb_ch,
               label_emb_std=m.label_emb_std, w_emb_ch=m.w_emb_ch)
  if is_classifier(config):
    return Classifier(num_classes, logsnr_emb_ch=m.logsnr_emb_ch, **_adm_fields(m, dtype))
  return UNet(num_classes, logsnr_emb_ch=m.logsnr_emb_ch, label_emb_std=m.label_emb_std,
              w_emb_ch=m.w_emb_ch, **_adm_fields(m, dtype))


def _adm_fields(m: ml_collections.ConfigDict, dtype: Any) -> dict[str, Any]:
  """The `unet.ADMBase` hyperparameters that the UNet and its classifier share."""
  return dict(ch=m.ch, num_res_blocks=m.num_res_blocks, ch_mult=tuple(m.ch_mult),
              attn_resolutions=tuple(m.attn_resolutions), num_heads=m.num_heads,
              num_head_channels=m.num_head_channels, dropout=m.dropout,
              resblock_updown=m.resblock_updown, skip_rescale=m.skip_rescale, dtype=dtype,
              remat=m.remat)


def takes_w(model: nn.Module) -> bool:
  """Whether `model` is an ε-network with the guidance weight w as an input (w_emb_ch > 0)."""
  return isinstance(model, (UNet, MLP)) and model.w_emb_ch > 0


def dummy_inputs(model: nn.Module, config: ml_collections.ConfigDict, *,
                 batch_size: int = 1) -> tuple[Array, ...]:
  """Zero inputs of the right shapes and dtypes: (z, logsnr[, labels[, w]]) for the model."""
  z = jnp.zeros((batch_size,) + config_lib.example_shape(config), jnp.float32)
  logsnr = jnp.zeros((batch_size,), jnp.float32)
  if isinstance(model, Classifier):
    return z, logsnr
  labels = jnp.zeros((batch_size,), jnp.int32)
  if takes_w(model):
    return z, logsnr, labels, jnp.zeros((batch_size,), jnp.float32)
  return z, logsnr, labels


def init_params(model: nn.Module, rng: Array, config: ml_collections.ConfigDict) -> Params:
  """The model's freshly initialized float32 params pytree (jitted, so a big net inits fast)."""
  inputs = dummy_inputs(model, config)
  return jax.jit(lambda rng: model.init({"params": rng}, *inputs, train=False)["params"])(rng)


def param_shapes(model: nn.Module, config: ml_collections.ConfigDict) -> Params:
  """The params pytree as `jax.ShapeDtypeStruct`s, without allocating the weights."""
  return jax.eval_shape(lambda rng: init_params(model, rng, config), jax.random.key(0))


def count_params(params: Params) -> int:
  """Number of scalars in a params pytree of arrays or `jax.ShapeDtypeStruct`s."""
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


def num_params(model: nn.Module, config: ml_collections.ConfigDict) -> int:
  """Parameter count of the model for config, through `jax.eval_shape`."""
  return count_params(param_shapes(model, config))


def make_apply_fn(model: nn.Module) -> Callable[..., Array]:
  """The ε-network in eval mode: `apply_fn(params, z, logsnr, labels) -> ε`, the sampler's
  contract, or for a network that takes w (`takes_w`, a guided-distillation student)
  `apply_fn(params, z, logsnr, labels, w) -> ε` with w float [B].
  """
  if isinstance(model, Classifier):
    raise TypeError("make_apply_fn is for the ε-networks (UNet, MLP); apply a Classifier "
                    "as model.apply({'params': params}, z, logsnr, train=False).")
  if takes_w(model):
    def apply_w_fn(params: Params, z: Array, logsnr: Array, labels: Array, w: Array) -> Array:
      return model.apply({"params": params}, z, logsnr, labels, w, train=False)

    return apply_w_fn

  def apply_fn(params: Params, z: Array, logsnr: Array, labels: Array) -> Array:
    return model.apply({"params": params}, z, logsnr, labels, train=False)

  return apply_fn
