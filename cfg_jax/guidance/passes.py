"""The two network outputs of a guided step, from one batched call.

Classifier-free: out(z, c) and out(z, ∅) from one pass on the doubled batch [z; z] with
labels [c; ∅]. Autoguidance (Karras et al. 2024): out(z, c) of the network and of a
weaker guide network; when both are the same architecture (the same apply_fn) the pair
is one call, vmapped over the two parameter sets stacked (`stack_params`).
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

Array = jax.Array
ApplyFn = Callable[[Any, Array, Array, Array], Array]


def cond_and_null(apply_fn: ApplyFn, params: Any, z: Array, logsnr: Array, labels: Array,
                  null_label: int) -> tuple[Array, Array]:
  """(out(z, c), out(z, ∅)) from one pass on the doubled batch."""
  batch = z.shape[0]
  out = apply_fn(params, jnp.concatenate([z, z]), jnp.concatenate([logsnr, logsnr]),
                 jnp.concatenate([labels, jnp.full_like(labels, null_label)]))
  return out[:batch], out[batch:]


def stack_params(params: Any, guide_params: Any) -> Any:
  """The two parameter sets of one architecture stacked on a new leading axis."""
  return jax.tree.map(lambda a, b: jnp.stack([a, b]), params, guide_params)


def cond_and_guide_stacked(apply_fn: ApplyFn, stacked_params: Any, z: Array, logsnr: Array,
                           labels: Array) -> tuple[Array, Array]:
  """(out(z, c), guide's out(z, c)) of one architecture, one call vmapped over the stacked
  parameters (`stack_params(params, guide_params)`)."""
  out = jax.vmap(apply_fn, in_axes=(0, None, None, None))(stacked_params, z, logsnr, labels)
  return out[0], out[1]


def cond_and_guide(apply_fn: ApplyFn, params: Any, guide_fn: ApplyFn, guide_params: Any,
                   z: Array, logsnr: Array, labels: Array) -> tuple[Array, Array]:
  """(out(z, c), guide_fn's out(z, c)) of two different networks: two calls."""
  return apply_fn(params, z, logsnr, labels), guide_fn(guide_params, z, logsnr, labels)
