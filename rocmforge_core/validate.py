"""Type and range checks for values that arrive from users, clients and files, each failing with one
BadInputError line that names the value. Shared by the engine's intake, the sampler and /load."""

from __future__ import annotations

import math
import numbers

from rocmforge_core.errors import BadInputError

INT32_MAX = 2**31 - 1  # GPU kernels and llama.cpp take counts such as top-k as 32-bit ints


def is_int(value) -> bool:
    """A whole number of an integer type (numpy's too); bool is refused although Python calls it one."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value) -> bool:
    """An int or a float (numpy's too), not a bool."""
    return isinstance(value, (numbers.Integral, numbers.Real)) and not isinstance(value, bool)


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def check_int(name: str, value, lo: int | None = None, hi: int | None = None, note: str = "") -> int:
    """`value` as an int, or BadInputError when it is not a whole number in [lo, hi]."""
    if not is_int(value):
        raise BadInputError(f"{name} must be a whole number (got {_shown(value)}{note})")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise BadInputError(f"{name} {_range_rule(lo, hi)} (got {_shown(value)}{note})")
    return int(value)


def check_number(name: str, value) -> float:
    """`value` as a float, or BadInputError when it is not a finite number (NaN and inf are refused)."""
    if not is_number(value):
        raise BadInputError(f"{name} must be a number (got {_shown(value)})")
    try:
        out = float(value)
    except OverflowError:  # an int too large for a float
        out = math.inf
    if not math.isfinite(out):
        raise BadInputError(f"{name} must be a finite number (got {_shown(value)})")
    return out


def _range_rule(lo: int | None, hi: int | None) -> str:
    if hi is None:
        return f"must be >= {lo}"
    if lo is None:
        return f"must be <= {hi}"
    return f"must be in [{lo}, {hi}]"
