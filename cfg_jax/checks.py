"""Allowed values: each check is a pair (predicate, what is allowed, in words).

The config's rules (`config_lib.RULES`), the sampler's options (`sampling.OPTION_RULES`)
and the guidance rules' parameters are written with these, so that every bad value is
refused with the same one-line message, `<name>=<value> is invalid: it must be <allowed>.`
"""
from __future__ import annotations

import math
from typing import Any, Callable

Check = tuple[Callable[[Any], bool], str]


def is_int(x: Any) -> bool:
  return isinstance(x, int) and not isinstance(x, bool)


def is_real(x: Any) -> bool:
  """A finite int or float (not a bool)."""
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def int_at_least(lo: int) -> Check:
  return (lambda x: is_int(x) and x >= lo), f"an int >= {lo}"


def real_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Check:
  def check(x):
    return (is_real(x) and (x > lo if lo_open else x >= lo)
            and (x < hi if hi_open else x <= hi))
  return check, f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"


def one_of(*values: Any) -> Check:
  return (lambda x: x in values), f"one of {values}"


BOOL: Check = (lambda x: isinstance(x, bool)), "True or False"
REAL: Check = is_real, "a finite number"
POSITIVE = real_in(0, math.inf, lo_open=True, hi_open=True)
NON_NEGATIVE = real_in(0, math.inf, hi_open=True)


def check(name: str, value: Any, rule: Check) -> None:
  """ValueError `<name>=<value> is invalid: it must be <allowed>.` unless value passes."""
  predicate, allowed = rule
  if not predicate(value):
    raise ValueError(f"{name}={value!r} is invalid: it must be {allowed}.")
