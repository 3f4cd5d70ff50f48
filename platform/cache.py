"""Where trained models are cached on disk, keyed by everything that made them.

Its own module (no torch, no models) so that every trainer — the pretrained models
and the action-recognition distillation — can use it without import cycles.
"""
from __future__ import annotations

import hashlib
import json
import os

__all__ = ["cache_dir", "cache_path"]


def cache_dir() -> str:
    """Where trained models are cached: ``$DRIFTLAB_CACHE`` or ``~/.cache/driftlab``."""
    path = os.environ.get("DRIFTLAB_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "driftlab")
    os.makedirs(path, exist_ok=True)
    return path


def cache_path(kind: str, *recipe) -> str:
    """The cache file of a model of ``kind`` trained from ``recipe`` (any
    JSON-able or printable parts: configs, sizes, seeds)."""
    blob = json.dumps(recipe, sort_keys=True, default=str).encode()
    return os.path.join(cache_dir(), f"{kind}-{hashlib.sha256(blob).hexdigest()[:16]}.pt")
