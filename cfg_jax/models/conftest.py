"""Fixtures of the models tests: the presets in configs/, tiny configs, random params, jaxprs."""
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cfg_jax import config_lib

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / "configs"


def _load_preset(name):
  return config_lib.load_config_file(CONFIGS / f"{name}.py")


def _tiny_config(name):
  """A model of each kind (unet, mlp, classifier) that compiles in seconds on a CPU."""
  config = config_lib.base_config()
  if name == "mlp":
    config.data.update(source="toy2d", num_classes=3)
    config.model.update(name="mlp", mlp_hidden=16, mlp_depth=2, dropout=0.1)
  else:
    config.data.update(image_size=16, channels=3, num_classes=3)
    config.model.update(name=name, ch=8, num_res_blocks=1, ch_mult=(1, 2), attn_resolutions=(8,),
                        num_heads=2, dropout=0.1, skip_rescale=False)
  config_lib.validate(config)
  return config


def _random_like(shapes, seed=0):
  """Values for a tree of shapes drawn with numpy: nothing to compile, no layer at zero.

  GroupNorm and LayerNorm scales are drawn around one, everything else around zero.
  """
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    centre = 1. if getattr(path[-1], "key", None) == "scale" else 0.
    return jnp.asarray(centre + 0.1 * rng.standard_normal(leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def _equations(jaxpr):
  """Every equation of a jaxpr and of the jaxprs inside it (jit, remat, custom derivatives)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for param in eqn.params.values():
      for sub in param if isinstance(param, (tuple, list)) else (param,):
        sub = getattr(sub, "jaxpr", sub)
        if hasattr(sub, "eqns"):
          yield from _equations(sub)


@pytest.fixture(scope="session")
def load_preset():
  return _load_preset


@pytest.fixture(scope="session")
def tiny_config():
  return _tiny_config


@pytest.fixture(scope="session")
def random_like():
  return _random_like


@pytest.fixture(scope="session")
def equations():
  return _equations
