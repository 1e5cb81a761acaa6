"""Argument checks shared by every module (the one definition of "an int" in the package)."""

from __future__ import annotations

from typing import Any

import numpy as np


def is_int(value: Any) -> bool:
    """A Python or NumPy integer, and not a bool."""
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def check_int(name: str, value: Any, low: int, high: int | None = None) -> int:
    """Returns ``value`` as an ``int`` if it is one in ``[low, high]``, else a ValueError."""
    if not is_int(value):
        raise ValueError(f"{name} must be an int, got {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def reject_renamed(function: str, passed: dict[str, Any], renamed: dict[str, str]) -> None:
    """Refuses keywords that were renamed (naming the new one) and any other unknown keyword."""
    for old in passed:
        if old in renamed:
            raise TypeError(f"{function}: keyword {old!r} was renamed to {renamed[old]!r}")
        raise TypeError(f"{function}() got an unexpected keyword argument {old!r}")
