"""Fixtures of the models tests: random params and the equations of jaxprs."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest


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
def random_like():
  return _random_like


@pytest.fixture(scope="session")
def equations():
  return _equations
