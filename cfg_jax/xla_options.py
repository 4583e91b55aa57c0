"""The XLA compiler options of cfg_jax's jitted programs (the sampler and the train step).

On CPU, XLA hands convolutions and dots to YNNPACK by default; for the UNets here XLA's
own kernels are faster (the mnist UNet forward ~1.2-1.5x, its train step ~1.1x on 2 cores:
bench/, BENCHMARKS.md), so cfg_jax turns YNNPACK off for its own programs. Other backends
get no options. CFG_JAX_XLA_DEFAULTS=1 keeps XLA's defaults.

jax accepts compiler options only on a top-level jit; `jit` below falls back to a plain
jit when called inside another trace (a user's jit or vmap of the sampler).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax
from jax._src import core as jax_core

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict[str, str]:
  """Options for `jax.jit(..., compiler_options=...)` on the default backend."""
  if jax.default_backend() != "cpu" or os.environ.get("CFG_JAX_XLA_DEFAULTS") == "1":
    return {}
  return dict(CPU_OPTIONS)


def _top_level() -> bool:
  """Whether no jax trace is active (jax has no public API for this; False if it moves)."""
  return getattr(jax_core, "trace_state_clean", lambda: False)()


def jit(fun: Callable[..., Any], **kwargs) -> Callable[..., Any]:
  """`jax.jit(fun, **kwargs)` with `compiler_options()` whenever jax allows them.

  The result is called like the jitted function and has its `lower`.
  """
  tuned = jax.jit(fun, compiler_options=compiler_options(), **kwargs)
  plain = jax.jit(fun, **kwargs)
  pick = lambda: tuned if _top_level() else plain

  def call(*args, **call_kwargs):
    return pick()(*args, **call_kwargs)

  call.lower = lambda *args, **call_kwargs: pick().lower(*args, **call_kwargs)
  return call
