"""Simulation configuration: dataclasses, YAML loading, validation at the edge.

Every field has a docstring entry; a config file may set any subset of them,
and anything it names that does not exist is an error (never silently ignored).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import yaml

from .drift import ChangePointParams
from .training import TrainSpec
from .world import SCENARIOS, WorldConfig

__all__ = ["DISTILL_WEIGHTS", "CostModel", "EdgeSyncParams", "SimConfig", "ConfigError", "load_config",
           "config_to_dict", "config_from_dict"]


DISTILL_WEIGHTS = {"hinton": 0.9, "genkd": 0.0, "none": 0.0}
"""``SimConfig.distill`` choices: the share of a job's loss that is Hinton
(logit) distillation; ``genkd`` adds seed 2's feature terms to the labels' loss."""


class ConfigError(ValueError):
    """A configuration value or file is not usable; the message says which."""


@dataclass(frozen=True)
class CostModel:
    """Virtual-clock costs, in simulated seconds. Results depend on these, never
    on how busy the machine running the simulation is.

    The defaults model a fleet whose server trains ~20 student sample-epochs per
    second and labels ~100 frames per second (a shared GPU training a
    MobileNetV3 at camera resolution).

    Attributes:
        infer_s_per_frame: student inference on the camera, per frame.
        label_s_per_frame: teacher labeling on the server, per frame.
        train_s_per_sample_epoch: student training on the server, per sample-epoch.
        downlink_s_per_mparam: time to ship one million parameters to a camera.
        genkd_factor: a genkd job's sample-epoch in plain ones: seed 2's CVAE
            phase adds a forward pass over the samples, its head and CVAE a
            little more (measured on CPU: ``experiments/bench_genkd.py``).
    """

    infer_s_per_frame: float = 0.002
    label_s_per_frame: float = 0.01
    train_s_per_sample_epoch: float = 0.05
    downlink_s_per_mparam: float = 1.0
    genkd_factor: float = 1.35

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not isinstance(v, (int, float)) or v < 0:
                raise ConfigError(f"{f.name} must be a number >= 0, got {v!r}")


@dataclass(frozen=True)
class EdgeSyncParams:
    """Hyperparameters of the ``edgesync`` strategy (the ones Tune searches).

    Attributes:
        period: seconds between a camera's uploads (and retraining requests).
        tau: timeliness decay (seconds): a sample of age ``a`` weighs ``exp(-a/tau)``.
        w_conf: filter weight of low student confidence.
        w_time: filter weight of timeliness.
        w_novel: filter weight of a predicted class whose share rose this window.
        horizon: oldest sample age (seconds) a job trains on.
        max_epochs: the most epochs a job may run.
        patience: early-stopping patience in epochs (0: off; with the short
            default jobs, holding out a validation split cost more than it saved).
        skip_accuracy: no job for a camera whose estimated accuracy is at least
            this (the estimate moves in steps of one upload's frames: with 8,
            0.92 skips only when all 8 agree; above 1 never skips).
        home_distance: no job for a camera that still runs its initial model
            while the mean condition of its frames stays within this distance
            of its first upload's (the condition that model was fit to): it
            has not drifted, and retraining it would cost accuracy there.
            0 turns this off; so does the change-point trigger (``+cp``).
        bn_layers: each camera refits the statistics of its model's first
            ``bn_layers`` BatchNorm layers to its own latest frames after every
            tick and every new model, so the model fits the current stream
            between retraining jobs; not while it runs its initial model
            within ``home_distance`` of the condition it started in (0: off).
        bn_window: seconds of the latest frames those statistics come from.
        bn_max_window: the refit's frames reach back further, ``bn_window``
            seconds at a time up to this many, while each earlier block's
            mean condition is within ``home_distance`` of the latest
            ``bn_window``'s: a settled scene gets quiet statistics, a
            changing one fresh ones (at most ``bn_window``: never).
        w_drift: priority weight of the estimated accuracy gap.
        w_mix: priority weight of the shift in predicted class mix.
        w_stale: priority weight of time since the camera's last update (per window).
    """

    period: float = 20.0
    tau: float = 200.0
    w_conf: float = 1.0
    w_time: float = 1.0
    w_novel: float = 0.5
    horizon: float = 240.0
    max_epochs: int = 2
    patience: int = 0
    skip_accuracy: float = 0.92
    home_distance: float = 0.06
    bn_layers: int = 9
    bn_window: float = 60.0
    bn_max_window: float = 240.0
    w_drift: float = 1.0
    w_mix: float = 0.5
    w_stale: float = 0.1

    def __post_init__(self):
        _validate_positive(self, "period", "tau", "horizon", "max_epochs", "bn_window")
        if not isinstance(self.bn_layers, int) or isinstance(self.bn_layers, bool):
            raise ConfigError(f"bn_layers must be a whole number >= 0, got {self.bn_layers!r}")
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if v < 0:
                raise ConfigError(f"{f.name} must be >= 0, got {v!r}")


@dataclass(frozen=True)
class SimConfig:
    """One simulation run.

    Attributes:
        scenario: a named drift scenario (see ``driftlab.platform.world.SCENARIOS``).
        cameras: number of cameras in the fleet.
        duration: stream seconds each camera plays.
        seed: seeds the streams, the models and every job.
        strategies: strategies to run, each on the same streams; ``<name>+cp``
            runs strategy ``name`` with the change-point trigger (its cameras
            retrain when their feature stream changes, not every period).
        window: retraining window in seconds (Ekya's retraining window).
        tick: the simulation step; deployments land at exact times within it.
        upload_fraction: bandwidth budget, the share of frames a camera may upload.
        server_gpus: training GPUs on the server shared by the whole fleet.
        fixed_epochs: epochs of the ``periodic`` strategy's jobs.
        distill: what every strategy's retraining learns from the teacher:
            ``hinton`` its logits (Hinton distillation, weight 0.9 at T=4) as
            well as its labels, ``genkd`` its labels plus seed 2's generative
            feature and attention distillation
            (:mod:`driftlab.platform.distill.frames`), ``none`` its labels
            only. The teacher's outputs cost no extra bandwidth (the server
            holds them) and say more per sample.
        borrow: every strategy's retraining job adds to its camera's samples
            up to this many of the other cameras' uploads of the last
            ``borrow_window`` seconds, the closest in condition (mean and
            spread of each colour channel) to the camera's newest upload:
            cameras that met a condition first teach the ones that meet it
            later. 0 (the default) trains on the camera's own samples only.
        borrow_window: how old a borrowed sample may be (seconds).
        retrain_lr: Adam learning rate of every retraining job (and Ekya's
            profiling runs).
        student: student architecture.
        teacher: teacher architecture.
        teacher_checkpoint: a checkpoint to use instead of the cached teacher.
        warmup: seconds of each camera's past its initial student is trained on.
        source: a video file every camera reads instead of the synthetic world.
        source_labels: optional CSV (frame,label) with ground truth for ``source``.
        world: the synthetic world's properties.
        costs: the virtual clock's cost model.
        edgesync: the ``edgesync`` strategy's hyperparameters.
        changepoint: the change-point trigger's settings (``+cp`` strategies).
    """

    scenario: str = "day_night"
    cameras: int = 4
    duration: float = 600.0
    seed: int = 0
    strategies: tuple[str, ...] = ("static", "periodic", "ekya", "ams", "edgesync")
    window: float = 60.0
    tick: float = 10.0
    upload_fraction: float = 0.2
    server_gpus: float = 1.0
    fixed_epochs: int = 10
    distill: str = "hinton"
    borrow: int = 0
    borrow_window: float = 120.0
    retrain_lr: float = 1e-3
    student: str = "mobilenet_v3_small"
    teacher: str = "resnet18"
    teacher_checkpoint: str | None = None
    warmup: float = 400.0
    source: str | None = None
    source_labels: str | None = None
    world: WorldConfig = field(default_factory=WorldConfig)
    costs: CostModel = field(default_factory=CostModel)
    edgesync: EdgeSyncParams = field(default_factory=EdgeSyncParams)
    changepoint: ChangePointParams = field(default_factory=ChangePointParams)

    def __post_init__(self):
        _validate_positive(self, "cameras", "duration", "window", "tick", "server_gpus",
                           "fixed_epochs", "warmup", "borrow_window", "retrain_lr")
        if not isinstance(self.borrow, int) or isinstance(self.borrow, bool) or self.borrow < 0:
            raise ConfigError(f"borrow must be a whole number >= 0, got {self.borrow!r}")
        if self.scenario not in SCENARIOS:
            raise ConfigError(f"unknown scenario {self.scenario!r}; choose one of: "
                              f"{', '.join(SCENARIOS)}")
        if not 0.0 < self.upload_fraction <= 1.0:
            raise ConfigError(f"upload_fraction must be in (0, 1], got {self.upload_fraction}")
        if self.window % self.tick != 0:
            raise ConfigError(f"window ({self.window}) must be a multiple of tick ({self.tick})")
        if self.duration < self.window:
            raise ConfigError(f"duration ({self.duration}) must be at least one window ({self.window})")
        if self.distill not in DISTILL_WEIGHTS:
            raise ConfigError(f"unknown distill {self.distill!r}; choose one of: {', '.join(DISTILL_WEIGHTS)}")
        if not self.strategies:
            raise ConfigError("no strategy to run")
        from .strategies import check_strategy  # late: strategies import this module

        for s in self.strategies:
            try:
                check_strategy(s)
            except ValueError as e:
                raise ConfigError(str(e)) from None

    @property
    def num_ticks(self) -> int:
        return int(round(self.duration / self.tick))

    def train_spec(self, **kwargs: Any) -> TrainSpec:
        """A retraining (or profiling) job's :class:`TrainSpec` with the fleet's
        distillation setting; every strategy's jobs are made here."""
        return TrainSpec(kd_weight=DISTILL_WEIGHTS[self.distill], lr=self.retrain_lr, **kwargs)


def _validate_positive(cfg: Any, *names: str) -> None:
    for n in names:
        v = getattr(cfg, n)
        if not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"{n} must be a positive number, got {v!r}")


_NESTED = {"world": WorldConfig, "costs": CostModel, "edgesync": EdgeSyncParams,
           "changepoint": ChangePointParams}


def config_from_dict(values: dict[str, Any], base: SimConfig | None = None) -> SimConfig:
    """A :class:`SimConfig` from plain values over ``base`` (default: the defaults)."""
    base = base or SimConfig()
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of field names to values, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(sorted(unknown))}")
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name in _NESTED:
            kwargs[name] = _nested(name, _NESTED[name], getattr(base, name), value)
        elif name == "strategies":
            kwargs[name] = tuple([value] if isinstance(value, str) else value)
        else:
            kwargs[name] = value
    try:
        return dataclasses.replace(base, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


def _nested(name: str, cls: type, base: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"config field {name!r} must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(value) - set(fields)
    if unknown:
        raise ConfigError(f"unknown field(s) in {name!r}: {', '.join(sorted(unknown))}")
    for k, v in value.items():
        expected = type(getattr(base, k))
        if expected in (int, float) and not (isinstance(v, (int, float)) and not isinstance(v, bool)):
            raise ConfigError(f"{name}.{k} must be a number, got {v!r}")
    try:
        return dataclasses.replace(base, **value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None


def load_config(path: str, base: SimConfig | None = None) -> SimConfig:
    """Read a YAML config file over ``base``; any problem is a :class:`ConfigError`."""
    try:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return config_from_dict(values, base)


def config_to_dict(cfg: SimConfig) -> dict[str, Any]:
    """Plain values (for YAML and Parquet metadata) that :func:`config_from_dict` reads back."""
    d = dataclasses.asdict(cfg)
    d["strategies"] = list(cfg.strategies)
    return d
