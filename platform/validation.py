"""One family of small validators for every config class, and its one error.

Each ``check_*`` reads named fields of a (frozen) config dataclass and raises
:class:`ConfigError` naming the first field that is wrong and its value, the
way Ray Serve's ``_validate_*`` helpers do. Every config class calls them from
its ``__post_init__``: ``SimConfig`` and its sections, ``WorldConfig``,
``ChangePointParams`` and the Ray runner's ``RayOptions``. Nothing here
imports more than the standard library, so configs stay cheap to build.
"""
from __future__ import annotations

import math
from typing import Any, Iterable

__all__ = ["ConfigError", "check_number", "check_positive", "check_non_negative", "check_whole",
           "check_range", "check_choice"]


class ConfigError(ValueError):
    """A configuration value or file is not usable; the message says which."""


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)


def check_number(cfg: Any, *names: str) -> None:
    """Each field is a real number (not a bool, not NaN)."""
    for n in names:
        v = getattr(cfg, n)
        if not _is_number(v):
            raise ConfigError(f"{n} must be a number, got {v!r}")


def check_positive(cfg: Any, *names: str) -> None:
    """Each field is a finite number > 0."""
    for n in names:
        v = getattr(cfg, n)
        if not _is_number(v) or v <= 0 or math.isinf(v):
            raise ConfigError(f"{n} must be a positive number, got {v!r}")


def check_non_negative(cfg: Any, *names: str) -> None:
    """Each field is a number >= 0."""
    for n in names:
        v = getattr(cfg, n)
        if not _is_number(v) or v < 0:
            raise ConfigError(f"{n} must be a number >= 0, got {v!r}")


def check_whole(cfg: Any, *names: str, minimum: int = 0) -> None:
    """Each field is a whole number (an ``int``, not a bool) >= ``minimum``."""
    for n in names:
        v = getattr(cfg, n)
        if not isinstance(v, int) or isinstance(v, bool) or v < minimum:
            raise ConfigError(f"{n} must be a whole number >= {minimum}, got {v!r}")


def check_range(cfg: Any, name: str, low: float, high: float, low_open: bool = False) -> None:
    """The field is a number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    v = getattr(cfg, name)
    if not _is_number(v) or v > high or v < low or (low_open and v == low):
        raise ConfigError(f"{name} must be in {'(' if low_open else '['}{low:g}, {high:g}], got {v!r}")


def check_choice(cfg: Any, name: str, options: Iterable[str], what: str | None = None) -> None:
    """The field is one of ``options``."""
    v, options = getattr(cfg, name), list(options)
    if v not in options:
        raise ConfigError(f"unknown {what or name} {v!r}; choose one of: {', '.join(map(str, options))}")
