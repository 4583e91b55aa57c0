"""The XLA compiler options of cfg_jax's jitted programs (the sampler and the train step).

On CPU, XLA hands convolutions and dots to YNNPACK by default; for the UNets here XLA's
own kernels are faster (BENCHMARKS.md has the figures), so cfg_jax turns YNNPACK off for
its own programs. Other backends get no options. CFG_JAX_XLA_DEFAULTS=1 keeps XLA's
defaults.

jax accepts compiler options only on a top-level jit; `jit` below falls back to a plain
jit when called inside another trace (a user's jit or vmap of the sampler).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import jax

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def compiler_options() -> dict[str, str]:
  """Options for `jax.jit(..., compiler_options=...)` on the default backend."""
  if jax.default_backend() != "cpu" or os.environ.get("CFG_JAX_XLA_DEFAULTS") == "1":
    return {}
  return dict(CPU_OPTIONS)


def _traced(args: Any) -> bool:
  """Whether any leaf of `args` is a tracer: the call is inside a jit, vmap, grad, ..."""
  return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(args))


def jit(fun: Callable[..., Any], **kwargs) -> Callable[..., Any]:
  """`jax.jit(fun, **kwargs)` with `compiler_options()` whenever jax allows them.

  Called inside another trace (tracer arguments), or where jax refuses the options
  (a nested jit whose arguments are all constants), it is the plain jit. The result is
  called like the jitted function and has its `lower`.
  """
  tuned = jax.jit(fun, compiler_options=compiler_options(), **kwargs)
  plain = jax.jit(fun, **kwargs)

  def run(method: str, args, kwargs):
    if _traced((args, kwargs)):
      return getattr(plain, method)(*args, **kwargs)
    try:
      return getattr(tuned, method)(*args, **kwargs)
    except ValueError as e:  # jax's refusal of the options on a nested jit
      if "compiler_options" not in str(e):
        raise
      return getattr(plain, method)(*args, **kwargs)

  call = lambda *args, **call_kwargs: run("__call__", args, call_kwargs)
  call.lower = lambda *args, **call_kwargs: run("lower", args, call_kwargs)
  return call
