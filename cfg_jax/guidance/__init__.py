"""Guidance: the classifier-free rules, their catalogue, and classifier guidance.

A rule (`base.Rule`) mixes the conditional and unconditional outputs of one step; each
is a module of its own:

    cfg            the paper's (1 + w) out(z, c) - w out(z, ∅)          cfg.py
    rescale        CFG on x̂, rescaled toward the conditional's std      rescale.py
    apg            adaptive projected guidance                           apg.py
    cfgpp          CFG++, re-noised with ε(z, ∅) (deterministic sampler)  cfgpp.py
    cfg_zero_star  CFG-Zero*: optimised scale s*, first steps zeroed     cfg_zero_star.py

`RULES` names them for the config (`sampling.guidance`), `PARAM_DEFAULTS` holds every
rule's parameters (`sampling.guidance_params`, each rule reading its own), `make_rule`
builds one. What the second pass is, ∅ or a weaker guide network (autoguidance), is
`passes`'; how w varies over λ, `w_schedules`'. Classifier guidance is `classifier`'s.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cfg_jax import checks
from cfg_jax.guidance.apg import APG
from cfg_jax.guidance.base import Guided
from cfg_jax.guidance.base import Inputs
from cfg_jax.guidance.base import Rule
from cfg_jax.guidance.cfg import CFG
from cfg_jax.guidance.cfg import classifier_free
from cfg_jax.guidance.cfg import mix
from cfg_jax.guidance.cfg_zero_star import CFGZeroStar
from cfg_jax.guidance.cfgpp import CFGPP
from cfg_jax.guidance.classifier import ClassifierFn
from cfg_jax.guidance.classifier import classifier_grad
from cfg_jax.guidance.rescale import Rescale
from cfg_jax.guidance.w_schedules import W_SCHEDULES
from cfg_jax.guidance.w_schedules import w_scale

__all__ = ["APG", "CFG", "CFGPP", "CFGZeroStar", "ClassifierFn", "Guided", "Inputs",
           "PARAM_DEFAULTS", "PARAM_RULES", "RULES", "Rescale", "Rule", "W_SCHEDULES",
           "classifier_free", "classifier_grad", "make_rule", "mix", "w_scale"]

RULES: dict[str, type[Rule]] = {rule.name: rule for rule in (CFG, Rescale, APG, CFGPP,
                                                             CFGZeroStar)}


def _parameters() -> tuple[dict[str, Any], dict[str, checks.Check]]:
  """Every rule's parameters: their defaults and allowed values. Two rules may share a
  parameter only with the same default and the same allowed values."""
  defaults, allowed = {}, {}
  for rule in RULES.values():
    for field in dataclasses.fields(rule):
      mine = (field.default, rule.PARAMS[field.name])
      if field.name in defaults and (defaults[field.name], allowed[field.name]) != mine:
        raise TypeError(f"guidance rule {rule.name!r} redefines the parameter {field.name!r} "
                        f"of another rule with another default or allowed values.")
      defaults[field.name], allowed[field.name] = mine
  return defaults, allowed


PARAM_DEFAULTS, PARAM_RULES = _parameters()


def make_rule(guidance: str | Any, params: Mapping[str, Any] | None = None) -> Any:
  """The rule named `guidance` (one of RULES) with its parameters taken from `params`
  (which may hold other rules' parameters too, as the config does), or `guidance` itself
  if it is a rule object: one with `init(z)` and `__call__(inputs, state)` (`Rule`)."""
  if not isinstance(guidance, str):
    if isinstance(guidance, type) or not (callable(guidance)
                                          and callable(getattr(guidance, "init", None))):
      raise ValueError(f"guidance must be one of {tuple(RULES)} or a rule object with "
                       f"init(z) and __call__(inputs, state) (cfg_jax.guidance.Rule), got "
                       f"{guidance!r}.")
    if params:
      raise ValueError("guidance_params name the parameters of a rule given by name; a rule "
                       "object holds its own.")
    return guidance
  if guidance not in RULES:
    raise ValueError(f"guidance={guidance!r} is invalid: it must be one of {tuple(RULES)} "
                     f"(or a rule object).")
  params = dict(params or {})
  unknown = sorted(set(params) - set(PARAM_DEFAULTS))
  if unknown:
    raise ValueError(f"guidance_params has {unknown}, which no rule takes; the rules' "
                     f"parameters are {sorted(PARAM_DEFAULTS)}.")
  rule = RULES[guidance]
  return rule(**{f.name: params[f.name] for f in dataclasses.fields(rule) if f.name in params})
