"""A model summary from a config: parameter count and activation shapes per resolution.

Everything goes through `jax.eval_shape`, so the 400M-parameter presets cost no memory
for weights and take seconds.
"""
from __future__ import annotations

import collections

import flax.linen as nn
import jax
import ml_collections

from cfg_jax.models import factory

_BLOCK_STAGES = ("down", "mid", "up", "block")


def _is_top_level(module: nn.Module, method_name: str) -> bool:
  return method_name == "__call__" and len(module.scope.path) == 1


def _stage(name: str) -> str:
  prefix = name.split("_")[0]
  if prefix in _BLOCK_STAGES:
    return prefix
  if name.endswith("_emb"):
    return "embed"
  return "in" if name.endswith("_in") else "out"


def _kind(name: str) -> str:
  """'down_1_res_2' -> 'res', 'mid_attn' -> 'attn', 'block_3' -> 'block'."""
  return "_".join(t for t in name.split("_")
                  if not t.isdigit() and t not in _BLOCK_STAGES[:3]) or name


def _shape(shape: tuple[int, ...]) -> str:
  return "x".join(map(str, shape)) or "scalar"


def summarize(config: ml_collections.ConfigDict) -> str:
  """The table of `python -m cfg_jax.models`: one row per run of top-level modules that
  share a stage (embed, in, down, mid, up, out) and an activation shape, in call order.
  """
  model = factory.create_model(config)
  inputs = factory.dummy_inputs(model, config)
  call_order = []

  def init(rng):
    out, variables = model.init_with_output({"params": rng}, *inputs, train=False,
                                            capture_intermediates=_is_top_level, mutable=True)
    # eval_shape hands dicts back sorted by key; the traced dict is still in call order.
    call_order.extend(variables["intermediates"])
    return out, variables

  out, variables = jax.eval_shape(init, jax.random.key(0))
  params, acts = variables["params"], variables["intermediates"]
  total = factory.count_params(params)

  rows = []  # [stage, activation, Counter of module kinds, parameters]
  for name in call_order:
    stage, act = _stage(name), _shape(acts[name]["__call__"][0].shape[1:])
    if not rows or rows[-1][:2] != [stage, act]:
      rows.append([stage, act, collections.Counter(), 0])
    rows[-1][2][_kind(name)] += 1
    rows[-1][3] += factory.count_params(params.get(name, {}))

  in_shapes = ", ".join(f"{n} [{_shape(x.shape[1:])}]"
                        for n, x in zip(("z", "logsnr", "labels", "w"), inputs))
  lines = [f"{type(model).__name__} ({config.model.name}): {total:,} parameters "
           f"({total * 4 / 2**20:,.1f} MiB in float32), compute dtype {config.model.dtype}",
           f"per example: {in_shapes} -> {out.dtype} [{_shape(out.shape[1:])}]", "",
           f"{'stage':<6} {'activation':<12} {'modules':<26} {'parameters':>12}"]
  for stage, act, kinds, count in rows:
    modules = ", ".join(k if n == 1 else f"{k} x{n}" for k, n in kinds.items())
    lines.append(f"{stage:<6} {act:<12} {modules:<26} {count:>12,}")
  return "\n".join(lines)
