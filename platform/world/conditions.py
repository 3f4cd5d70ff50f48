"""Conditions a camera sees, and scenarios that schedule them over stream time.

A :class:`Condition` is a point in a continuous space (light, noise, fog, rain,
snow, colour cast, background, class mix), so a transition between two of them
is a plain linear blend. A :class:`Scenario` is a list of keyframes over the
run's normalised time ``u = t / duration`` in ``[0, 1]``; each camera reads it
shifted by its own phase, so cameras drift at different times.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

__all__ = ["Condition", "Scenario", "CONDITIONS", "SCENARIOS", "get_scenario"]


@dataclass(frozen=True)
class Condition:
    """What the camera sees at one instant. Every field blends linearly.

    Attributes:
        light: scene brightness gain (1 day, ~0.55 dusk, ~0.4 night).
        noise: std of additive sensor noise, in [0, 1] intensity units.
        fog: blend weight toward a flat haze, in [0, 1].
        rain: density of rain streaks, in [0, 1].
        snow: density of snow flakes, in [0, 1].
        cast: per-channel (R, G, B) gain, a colour cast.
        background: background scene index; a fraction cross-fades two scenes.
        class_mix: relative weight of each object class (None: uniform).
    """

    light: float = 1.0
    noise: float = 0.0
    fog: float = 0.0
    rain: float = 0.0
    snow: float = 0.0
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background: float = 0.0
    class_mix: tuple[float, ...] | None = None

    def blend(self, other: "Condition", w: float) -> "Condition":
        """(1 - w) * self + w * other, field by field (a None class mix is uniform)."""
        if w <= 0.0:
            return self
        if w >= 1.0:
            return other
        values = {}
        for f in dataclasses.fields(self):
            a, b = getattr(self, f.name), getattr(other, f.name)
            if a is None and b is None:
                values[f.name] = None
                continue
            a = tuple(1.0 for _ in b) if a is None else a
            b = tuple(1.0 for _ in a) if b is None else b
            mixed = (1 - w) * np.asarray(a, dtype=float) + w * np.asarray(b, dtype=float)
            values[f.name] = tuple(mixed.tolist()) if mixed.ndim else float(mixed)
        return Condition(**values)

    def class_weights(self, num_classes: int) -> np.ndarray:
        """Normalised class probabilities for a world with ``num_classes``."""
        if self.class_mix is None:
            return np.full(num_classes, 1.0 / num_classes)
        w = np.resize(np.asarray(self.class_mix, dtype=float), num_classes)
        return w / w.sum()


CONDITIONS: dict[str, Condition] = {
    "day": Condition(),
    "dusk": Condition(light=0.55, noise=0.02, cast=(1.1, 0.92, 0.8)),
    "night": Condition(light=0.4, noise=0.05, cast=(0.88, 0.92, 1.15)),
    "fog": Condition(light=0.85, fog=0.6),
    "rain": Condition(light=0.65, rain=0.8, noise=0.02, cast=(0.9, 0.95, 1.05)),
    "snow": Condition(light=1.05, snow=0.8, fog=0.2),
    "new_scene": Condition(background=2.0, cast=(1.1, 1.0, 0.85),
                           class_mix=(0.2, 0.2, 1.0, 1.0, 1.0, 1.0)),
    "night_rain": Condition(light=0.42, noise=0.045, rain=0.5, cast=(0.88, 0.92, 1.15)),
}
"""Named conditions; every field not set is the clear-day default."""


@dataclass(frozen=True)
class Scenario:
    """A schedule of conditions over normalised run time ``u`` in [0, 1].

    Attributes:
        name: the scenario's name.
        keyframes: ``(u_start, condition_name)`` pairs in increasing ``u``; the
            condition holds from ``u_start`` to the next keyframe's start minus
            the transition, then blends into it.
        transition: length of each blend, as a fraction of the run.
        phase_spread: camera ``i`` of ``n`` reads the schedule shifted later by
            ``phase_spread * i / n`` of the run, so cameras drift at different times.
    """

    name: str
    keyframes: tuple[tuple[float, str], ...]
    transition: float = 0.05
    phase_spread: float = 0.2
    description: str = ""

    def __post_init__(self):
        if not self.keyframes or self.keyframes[0][0] != 0.0:
            raise ValueError(f"scenario {self.name!r}: the first keyframe must start at u=0")
        us = [u for u, _ in self.keyframes]
        if us != sorted(us):
            raise ValueError(f"scenario {self.name!r}: keyframes must be in increasing time")
        for _, c in self.keyframes:
            if c not in CONDITIONS:
                raise ValueError(f"scenario {self.name!r}: unknown condition {c!r}; "
                                 f"known: {', '.join(CONDITIONS)}")

    def phase(self, camera: int, num_cameras: int) -> float:
        return self.phase_spread * camera / max(num_cameras, 1)

    def condition_at(self, u: float) -> Condition:
        """The condition at normalised time ``u`` (held constant outside [0, 1])."""
        frames = self.keyframes
        i = max(j for j, (start, _) in enumerate(frames) if start <= max(u, 0.0))
        current = CONDITIONS[frames[i][1]]
        if i + 1 < len(frames):
            nxt_start, nxt = frames[i + 1]
            blend_start = nxt_start - self.transition
            if u > blend_start:
                return current.blend(CONDITIONS[nxt], (u - blend_start) / self.transition)
        return current

    def is_drifted(self, u: float) -> bool:
        """Whether the condition at ``u`` differs from the run's initial one."""
        return self.condition_at(u) != self.condition_at(0.0)


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("day_night", ((0.0, "day"), (0.22, "dusk"), (0.36, "night"), (0.75, "dusk"),
                           (0.88, "day")),
             description="a day turning to dusk and night with sensor noise, then back"),
    Scenario("weather", ((0.0, "day"), (0.18, "fog"), (0.42, "day"), (0.55, "rain"),
                         (0.75, "snow")),
             description="clear, fog, clear, rain, then snow"),
    Scenario("scene_change", ((0.0, "day"), (0.25, "new_scene")),
             description="the camera is re-aimed: a new background, colour cast and class mix"),
    Scenario("mixed", ((0.0, "day"), (0.15, "fog"), (0.32, "dusk"), (0.45, "night_rain"),
                       (0.68, "new_scene"), (0.85, "snow")),
             description="a long run through fog, dusk, rainy night, a new scene and snow"),
]}
"""The named scenarios shipped with driftlab."""


def get_scenario(name: str) -> Scenario:
    """Look up a named scenario, with a clear error for an unknown name."""
    try:
        return SCENARIOS[name]
    except KeyError:
        raise ValueError(f"unknown scenario {name!r}; choose one of: "
                         f"{', '.join(SCENARIOS)}") from None
