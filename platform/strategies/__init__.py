"""Adaptation strategies: a camera policy and a training manager each, by name.

All strategies get the same bandwidth budget (``upload_fraction`` of frames), the
same teacher and the same server GPUs; they differ in which frames they upload,
which jobs they run, in what order and for how long, and in the camera
components they hold (see :mod:`.registry`). One file per family; the
baselines' constants sit in one cited table each (``AMS_CONFIG``, ``EKYA_CONFIG``).
"""
# Registered in this order (the default table's order).
from . import baselines, ams, ekya, edgesync  # noqa: F401,I001
from .base import CameraPolicy, Profiler, TrainingManager
from .registry import (COMPONENTS, STRATEGIES, Strategy, StrategyDef, parse_strategies, parse_strategy,
                       register_strategy)

__all__ = ["CameraPolicy", "TrainingManager", "Profiler", "COMPONENTS", "STRATEGIES", "Strategy", "StrategyDef",
           "parse_strategy", "parse_strategies", "register_strategy"]
