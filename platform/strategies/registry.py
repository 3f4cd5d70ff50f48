"""Strategy names -> (camera policy, training manager, default components).

A name in a config may add components with ``+`` and drop a
strategy's defaults with ``-``; :func:`parse_strategy` reads it, once, into a
:class:`Strategy`, a small picklable value that each process uses to build
only its own half: a camera its :class:`CameraPolicy` (and its trigger and
adapters, :mod:`driftlab.platform.adapters`), the server its
:class:`TrainingManager`. A strategy registered in the user's own module
travels to Ray actors inside that value, so they need not import the module.

    register_strategy("mine", MyPolicy, MyManager)          # a new strategy
    parse_strategy("edgesync+cp")    # EdgeSync, uploads on change points
    parse_strategy("ams+refit")      # AMS whose cameras refit BatchNorm
    parse_strategy("edgesync-refit") # EdgeSync without its refit
    parse_strategy("ams+zoo")        # AMS with a model zoo on the server
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..validation import ConfigError
from .base import CameraPolicy, TrainingManager

if TYPE_CHECKING:
    from ..config import SimConfig

__all__ = ["COMPONENTS", "STRATEGIES", "StrategyDef", "Strategy", "register_strategy", "parse_strategy",
           "parse_strategies"]

COMPONENTS: dict[str, str] = {
    "cp": "change-point trigger: upload and retrain when the camera's feature stream "
          "shows a change point (seed 3's detector), not every period",
    "refit": "BatchNorm refit: the camera refits its student's shallow BatchNorm "
             "statistics to its latest frames (settings: refit)",
    "zoo": "model zoo (server): past models kept by the condition they were trained in, "
           "one deployed at once when a camera's uploads show that condition again (settings: zoo)",
}
"""Components a strategy name can add (``+name``) or drop (``-name``): the
camera's (``cp``, ``refit``: :mod:`driftlab.platform.adapters`) and the
server's (``zoo``: :mod:`driftlab.platform.zoo`)."""


@dataclass(frozen=True)
class StrategyDef:
    """A registered strategy.

    Attributes:
        name: its registry name.
        policy: its camera-side class.
        manager: its server-side class.
        components: components it has by default (see :data:`COMPONENTS`).
        adapts: False for a strategy that never retrains (no uploads, no jobs).
    """

    name: str
    policy: type[CameraPolicy]
    manager: type[TrainingManager]
    components: tuple[str, ...] = ()
    adapts: bool = True


STRATEGIES: dict[str, StrategyDef] = {}


def register_strategy(name: str, policy: type[CameraPolicy] = CameraPolicy,
                      manager: type[TrainingManager] = TrainingManager,
                      components: tuple[str, ...] = (), adapts: bool = True) -> StrategyDef:
    """Add (or replace) strategy ``name``; returns its definition."""
    if not re.fullmatch(r"[A-Za-z0-9_]+", name):
        raise ValueError(f"a strategy name is letters, digits and '_', got {name!r}")
    unknown = set(components) - set(COMPONENTS)
    if unknown:
        raise ValueError(f"unknown camera component(s) {sorted(unknown)}; known: {', '.join(COMPONENTS)}")
    STRATEGIES[name] = StrategyDef(name, policy, manager, tuple(components), adapts)
    return STRATEGIES[name]


@dataclass(frozen=True)
class Strategy:
    """A strategy as one run uses it: its definition and its components.

    Attributes:
        name: as the config wrote it (``"edgesync+cp"``); results are filed under it.
        definition: the registered strategy.
        components: its camera and server components.
    """

    name: str
    definition: StrategyDef
    components: frozenset[str]

    @property
    def adapts(self) -> bool:
        return self.definition.adapts

    @property
    def changepoint(self) -> bool:
        """Its cameras upload on change points of their feature stream."""
        return "cp" in self.components

    def camera_policy(self, cfg: SimConfig, camera: int) -> CameraPolicy:
        """The camera half, for camera ``camera``."""
        policy = self.definition.policy(cfg, camera)
        policy.send_condition = self.definition.manager.reads_condition(cfg, self.changepoint)
        return policy

    def training_manager(self, cfg: SimConfig) -> TrainingManager:
        """The server half."""
        return self.definition.manager(cfg, changepoint=self.changepoint)


def parse_strategy(name: str) -> Strategy:
    """``base[+component|-component]...`` -> :class:`Strategy`; a clear
    ``ValueError`` for an unknown strategy or component or a trigger on a
    strategy that never retrains."""
    base, *edits = re.split(r"(?=[+-])", name)
    if base not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose from: {', '.join(STRATEGIES)}, each "
                         f"optionally with +component or -component ({', '.join(COMPONENTS)})")
    definition = STRATEGIES[base]
    components = set(definition.components)
    for edit in edits:
        sign, component = edit[0], edit[1:]
        if component not in COMPONENTS:
            raise ValueError(f"strategy {name!r}: unknown camera component {component!r}; "
                             f"choose from: {', '.join(f'{k} ({v})' for k, v in COMPONENTS.items())}")
        (components.add if sign == "+" else components.discard)(component)
    if "cp" in components and not definition.adapts:
        raise ValueError(f"strategy {name!r}: {base} never retrains, so it has nothing to trigger")
    if "zoo" in components and not definition.adapts:
        raise ValueError(f"strategy {name!r}: {base} never uploads, so its zoo would see no condition")
    return Strategy(name, definition, frozenset(components))


def parse_strategies(cfg: SimConfig) -> list[Strategy]:
    """``cfg.strategies`` parsed; an unknown name is a :class:`ConfigError`."""
    try:
        return [parse_strategy(name) for name in cfg.strategies]
    except ValueError as e:
        raise ConfigError(str(e)) from None
