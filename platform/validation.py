"""One family of small validators for every config class, and its one error.

Each ``check_*`` reads named fields of a (frozen) config dataclass and raises
:class:`ConfigError` naming the first field that is wrong and its value, the
way Ray Serve's ``_validate_*`` helpers do. Every config class calls them from
its ``__post_init__``: ``SimConfig`` and its sections, ``WorldConfig``,
``ChangePointParams`` and the Ray runner's ``RayOptions``. Nothing here
imports more than the standard library, so configs stay cheap to build.
"""
from __future__ import annotations

import functools
import math
import types
import typing
from typing import Any, Iterable

__all__ = ["ConfigError", "check_number", "check_positive", "check_non_negative", "check_whole",
           "check_range", "check_choice", "check_type", "field_types"]


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


@functools.lru_cache(maxsize=None)
def field_types(cls: type) -> dict[str, Any]:
    """A config dataclass's fields and their annotated types."""
    return typing.get_type_hints(cls)


def check_type(name: str, hint: Any, value: Any) -> None:
    """``value`` (as YAML or a caller gives it) has the field's annotated type
    ``hint``: ``int`` (not a bool), ``float`` (an int is one, a bool is not,
    nor NaN), ``str``, ``X | None``, ``tuple[X, ...]`` and ``tuple[X, Y]``
    (a list is one); other annotations are left to the class's own checks
    (nested configs are checked field by field where they are read). Checked
    before a config is built, so a value of the wrong kind is one
    :class:`ConfigError` naming the field, never a ``TypeError`` later.
    """
    if not _fits(hint, value):
        raise ConfigError(f"{name} must be {_describe(hint)}, got {value!r}")


def _fits(hint: Any, value: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is float:
        return _is_number(value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint in (str, bool):
        return isinstance(value, hint)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_fits(args[0], v) for v in value)
        return len(value) == len(args) and all(_fits(a, v) for a, v in zip(args, value))
    return True  # an annotation this check does not know: the class's own checks decide


_NOUNS = {type(None): ("null (unset)", "nulls"), float: ("a number", "numbers"), int: ("a whole number", "whole numbers"),
          str: ("a string", "strings"), bool: ("true or false", "booleans")}


def _describe(hint: Any, plural: bool = False) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a, plural) for a in args)
    if origin is tuple:
        what = "lists of" if plural else "a list of"
        if len(args) == 2 and args[1] is Ellipsis:
            return f"{what} {_describe(args[0], True)}"
        return f"{what} {len(args)} {_describe(args[0], True)}"
    return _NOUNS[hint][plural]
