"""Simulation configuration: dataclasses, YAML loading, validation.

Every field has a docstring entry; a config file may set any subset of them,
and anything it names that does not exist is an error (never silently ignored).
This module is a leaf: it imports no strategy, model or torch, so building a
config is cheap; strategy names are checked where they are used
(:func:`driftlab.platform.strategies.parse_strategy`, called by the runners
and the CLI).
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from .drift import ChangePointParams
from .validation import (ConfigError, check_choice, check_non_negative, check_positive, check_range,
                         check_type, check_whole, field_types)
from .world import SCENARIOS, WorldConfig
from .world.recorded import SourceSpec
from .world.render import SHAPE_NAMES

__all__ = ["DISTILL_WEIGHTS", "CostModel", "EdgeSyncParams", "RefitParams", "ZooParams", "ModelSpec", "TeacherSpec",
           "SourceSpec", "SimConfig", "ConfigError", "describe_sources", "load_config", "config_to_dict", "config_from_dict"]


DISTILL_WEIGHTS = {"hinton": 0.9, "genkd": 0.0, "none": 0.0}
"""``SimConfig.distill`` choices: the share of a job's loss that is Hinton
(logit) distillation; ``genkd`` adds seed 2's feature terms to the labels' loss."""


@dataclass(frozen=True)
class CostModel:
    """Virtual-clock costs, in simulated seconds. Results depend on these, never
    on how busy the machine running the simulation is.

    The defaults model a fleet whose server trains ~20 student sample-epochs per
    second and labels ~100 frames per second (a shared GPU training a
    MobileNetV3 at camera resolution).

    Attributes:
        label_s_per_frame: teacher labeling on the server, per frame.
        train_s_per_sample_epoch: student training on the server, per sample-epoch.
        downlink_s_per_mparam: time to ship one million parameters to a camera.
        genkd_factor: a genkd job's sample-epoch in plain ones: seed 2's CVAE
            phase adds a forward pass over the samples, its head and CVAE a
            little more (measured on CPU: ``experiments/bench_genkd.py``).
    """

    label_s_per_frame: float = 0.01
    train_s_per_sample_epoch: float = 0.05
    downlink_s_per_mparam: float = 1.0
    genkd_factor: float = 1.35

    def __post_init__(self):
        check_non_negative(self, *(f.name for f in dataclasses.fields(self)))


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
    w_drift: float = 1.0
    w_mix: float = 0.5
    w_stale: float = 0.1

    def __post_init__(self):
        check_positive(self, "period", "tau", "horizon")
        check_whole(self, "max_epochs", minimum=1)
        check_whole(self, "patience")
        check_non_negative(self, "w_conf", "w_time", "w_novel", "skip_accuracy", "home_distance",
                           "w_drift", "w_mix", "w_stale")


@dataclass(frozen=True)
class RefitParams:
    """The camera-side BatchNorm refit (the ``refit`` camera adapter,
    :class:`driftlab.platform.adapters.BatchNormRefit`): each camera refits
    the statistics of its student's first ``layers`` BatchNorm layers to its
    own latest frames after every tick and every new model, so the model
    fits the current stream between retraining jobs (AdaBN, Li et al. 2016,
    on the shallow layers only). ``edgesync`` has it by default; add it to
    any strategy as ``<name>+refit``, take it away as ``<name>-refit``.

    Attributes:
        layers: how many of the first BatchNorm layers are refitted (0: none).
        window: seconds of the latest frames the statistics come from.
        max_window: the frames reach back further, ``window`` seconds at a
            time up to this many, while each earlier block's mean condition
            is within ``same_distance`` of the latest ``window``'s: a settled
            scene gets quiet statistics, a changing one fresh ones (at most
            ``window``: never).
        same_distance: how close two mean conditions are to count as one.
        home_distance: no refit while the camera still runs its initial model
            and the mean condition of its latest frames stays within this
            distance of all it saw before (its initial model's own statistics
            fit that condition best); 0: refit from the first tick. Off under
            the change-point trigger, whose cameras have no home to watch.
    """

    layers: int = 9
    window: float = 60.0
    max_window: float = 240.0
    same_distance: float = 0.06
    home_distance: float = 0.06

    def __post_init__(self):
        check_whole(self, "layers")
        check_positive(self, "window")
        check_non_negative(self, "max_window", "same_distance", "home_distance")


@dataclass(frozen=True)
class ZooParams:
    """The model zoo (the ``zoo`` server component,
    :class:`driftlab.platform.zoo.ModelZoo`): the server keeps each camera's
    past models keyed by the condition they were trained in and, when a
    camera's upload shows a condition it has seen, deploys the stored model at
    once instead of waiting for retraining (RECL, Khani et al., NSDI 2023).
    Add it to any adapting strategy as ``<name>+zoo``.

    Attributes:
        size: models kept per camera; past it, of the two closest in
            condition the one fewer of the camera's uploads matched leaves.
        match_distance: an upload's mean condition (the mean and spread of
            each colour channel, :func:`~driftlab.platform.scheduling.condition_stats`)
            within this distance of a stored model's makes it a candidate;
            a new model this close to a stored one replaces its weights.
        margin: a candidate is deployed only if it labels the upload's frames
            (against the teacher) better than the camera's model by more than
            this share (0: any better).
        shared: candidates come from every camera's models, not only the camera's own.
    """

    size: int = 4
    match_distance: float = 0.06
    margin: float = 0.0
    shared: bool = False

    def __post_init__(self):
        check_whole(self, "size", minimum=1)
        check_non_negative(self, "match_distance")
        check_range(self, "margin", 0.0, 1.0)


@dataclass(frozen=True)
class ModelSpec:
    """A model of the run: a torchvision classification architecture, where
    its weights come from, and the input it takes.

    Attributes:
        arch: any of ``torchvision.models.list_models(torchvision.models)``
            (``resnet50``, ``efficientnet_b0``, ``mobilenet_v3_large``, ...).
        weights: its weights, a ``state_dict`` file or a TorchScript file
            (default: trained here: the teacher on the synthetic world, each
            camera's first student on its own past, labelled by the teacher).
        input_size: side of the square frames it takes, in pixels (default:
            the world's frame size); frames are resized to it.
        mean: per-channel mean of its normalisation, RGB in [0, 1] (the
            synthetic world's models use 0.45; ImageNet weights 0.485, 0.456, 0.406).
        std: per-channel standard deviation (0.25; ImageNet 0.229, 0.224, 0.225).
    """

    arch: str = "mobilenet_v3_small"
    weights: str | None = None
    input_size: int | None = None
    mean: tuple[float, float, float] = (0.45, 0.45, 0.45)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self):
        if not isinstance(self.arch, str) or not self.arch:
            raise ConfigError(f"arch must be a torchvision architecture name, got {self.arch!r}")
        if self.input_size is not None:
            check_whole(self, "input_size", minimum=16)
        for name in ("mean", "std"):
            v = getattr(self, name)
            if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
                raise ConfigError(f"{name} must be three numbers (R, G, B), got {list(v)}")
        if min(self.std) <= 0:
            raise ConfigError(f"std must be positive, got {list(self.std)}")


@dataclass(frozen=True)
class TeacherSpec(ModelSpec):
    """The teacher: a :class:`ModelSpec` and the task's classes.

    Attributes:
        classes: the task's class names, carried into every output (default:
            the synthetic world's shapes).
        class_map: for a teacher with other classes than the task's (an
            ImageNet or COCO classifier), the teacher output indices that make
            up each task class, one list per class: the task class's score is
            the log of their summed probabilities.
    """

    arch: str = "resnet18"
    classes: tuple[str, ...] | None = None
    class_map: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.classes is not None:
            if not self.classes or not all(isinstance(c, str) and c for c in self.classes):
                raise ConfigError(f"teacher.classes must be a list of names, got {self.classes!r}")
            if len(set(self.classes)) != len(self.classes):
                raise ConfigError(f"teacher.classes has duplicates: {list(self.classes)}")
        if self.class_map is not None:
            if self.classes is None or len(self.class_map) != len(self.classes):
                raise ConfigError("teacher.class_map needs one list of teacher indices per class of "
                                  "teacher.classes")
            for name, idx in zip(self.classes, self.class_map):
                if not idx or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in idx):
                    raise ConfigError(f"teacher.class_map for {name!r} must be a non-empty list of "
                                      f"teacher output indices, got {list(idx)}")


@dataclass(frozen=True)
class SimConfig:
    """One simulation run.

    Attributes:
        scenario: a named drift scenario (see ``driftlab.platform.world.SCENARIOS``).
        cameras: number of cameras in the fleet (with ``sources``, their number).
        duration: stream seconds each camera plays.
        seed: seeds the streams, the models and every job.
        strategies: strategies to run, each on the same streams. A name may
            add camera components with ``+`` and drop its defaults with ``-``:
            ``edgesync+cp`` uploads and retrains on change points of the
            camera's feature stream instead of every period, ``ams+refit``
            gives AMS's cameras the BatchNorm refit, ``edgesync-refit``
            takes it from EdgeSync's (see
            :func:`driftlab.platform.strategies.parse_strategy`).
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
        student: the cameras' model (a :class:`ModelSpec`; a name is its ``arch``).
        teacher: the server's labeller (a :class:`TeacherSpec`; a name is its ``arch``).
        warmup: seconds of each camera's past its initial student is trained on.
        sources: what each camera plays, one :class:`SourceSpec` per camera
            (a name is its ``path``): video files, directories of frames or
            ``synthetic``; empty: every camera plays the synthetic world.
        world: the synthetic world's properties.
        costs: the virtual clock's cost model.
        edgesync: the ``edgesync`` strategy's hyperparameters.
        refit: the BatchNorm refit's settings (``+refit``, and ``edgesync``'s default).
        changepoint: the change-point trigger's settings (``+cp`` strategies).
        zoo: the model zoo's settings (``+zoo`` strategies).
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
    student: ModelSpec = field(default_factory=ModelSpec)
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    warmup: float = 400.0
    sources: tuple[SourceSpec, ...] = ()
    world: WorldConfig = field(default_factory=WorldConfig)
    costs: CostModel = field(default_factory=CostModel)
    edgesync: EdgeSyncParams = field(default_factory=EdgeSyncParams)
    refit: RefitParams = field(default_factory=RefitParams)
    changepoint: ChangePointParams = field(default_factory=ChangePointParams)
    zoo: ZooParams = field(default_factory=ZooParams)

    def __post_init__(self):
        check_whole(self, "cameras", minimum=1)
        check_whole(self, "borrow")
        check_positive(self, "duration", "window", "tick", "server_gpus", "warmup", "borrow_window",
                       "retrain_lr")
        check_whole(self, "fixed_epochs", minimum=1)
        check_choice(self, "scenario", SCENARIOS, "scenario")
        check_range(self, "upload_fraction", 0.0, 1.0, low_open=True)
        check_choice(self, "distill", DISTILL_WEIGHTS, "distill")
        if self.window % self.tick != 0:
            raise ConfigError(f"window ({self.window}) must be a multiple of tick ({self.tick})")
        if self.duration < self.window:
            raise ConfigError(f"duration ({self.duration}) must be at least one window ({self.window})")
        if not self.strategies:
            raise ConfigError("no strategy to run")
        if self.sources and len(self.sources) != self.cameras:
            raise ConfigError(f"cameras ({self.cameras}) differs from the {len(self.sources)} sources: "
                              f"the sources list sets the fleet's size")
        if self.synthetic_cameras:
            if len(self.classes) != self.world.num_classes:
                raise ConfigError(f"teacher.classes names {len(self.classes)} classes, the synthetic "
                                  f"world has {self.world.num_classes} (world.num_classes)")
            if self.frame_size != self.world.size:
                raise ConfigError(f"synthetic cameras render {self.world.size} px frames (world.size); "
                                  f"the models' input_size ({self.frame_size}) must match it")
        if self.distill == "genkd" and self.teacher.class_map is not None:
            raise ConfigError("distill: genkd reads the teacher's own feature maps; it does not work "
                              "with teacher.class_map")

    @property
    def classes(self) -> tuple[str, ...]:
        """The task's class names."""
        return self.teacher.classes or SHAPE_NAMES[:self.world.num_classes]

    @property
    def num_classes(self) -> int:
        """How many classes the student predicts."""
        return len(self.classes)

    @property
    def frame_size(self) -> int:
        """Side of the frames cameras read from recordings: what the larger model takes."""
        return max(self.teacher.input_size or self.world.size, self.student.input_size or self.world.size)

    @property
    def synthetic_cameras(self) -> list[int]:
        """The cameras that play the synthetic world."""
        return [i for i in range(self.cameras) if not self.sources or self.sources[i].synthetic]


_NESTED = {"world": WorldConfig, "costs": CostModel, "edgesync": EdgeSyncParams, "refit": RefitParams,
           "changepoint": ChangePointParams, "zoo": ZooParams, "student": ModelSpec, "teacher": TeacherSpec}
_SHORTHAND = {"student": "arch", "teacher": "arch"}
"""Nested fields a plain string may stand for: the field it sets."""


def config_from_dict(values: dict[str, Any], base: SimConfig | None = None) -> SimConfig:
    """A :class:`SimConfig` from plain values over ``base`` (default: the defaults)."""
    base = base or SimConfig()
    if not isinstance(values, dict):
        raise ConfigError(f"a config must be a mapping of field names to values, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError("unknown config field(s): " + ", ".join(
            f"{k} (now {_RENAMED[k]})" if k in _RENAMED else k for k in sorted(map(str, unknown))))
    kwargs: dict[str, Any] = {}
    for name, value in values.items():
        if name in _NESTED:
            if name in _SHORTHAND and isinstance(value, str):
                value = {_SHORTHAND[name]: value}
            kwargs[name] = _nested(name, _NESTED[name], getattr(base, name), value)
        elif name == "sources":
            kwargs[name] = _sources(value)
        else:
            if name == "strategies" and isinstance(value, str):
                value = [value]
            check_type(name, field_types(SimConfig)[name], value)
            kwargs[name] = tuple(value) if isinstance(value, list) else value
    if kwargs.get("sources") and "cameras" not in values:
        kwargs["cameras"] = len(kwargs["sources"])
    try:
        return dataclasses.replace(base, **kwargs)
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from None


_RENAMED = {"edgesync.bn_layers": "refit.layers", "edgesync.bn_window": "refit.window",
            "edgesync.bn_max_window": "refit.max_window", "costs.infer_s_per_frame": None,
            "source": "sources", "source_labels": "sources[].labels", "teacher_checkpoint": "teacher.weights"}
"""Fields of older configs: where they went (``None``: removed, never read)."""


def _sources(value: Any) -> tuple[SourceSpec, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError("sources must be a list, one entry per camera (a path or a mapping)")
    out = []
    for i, entry in enumerate(value):
        if isinstance(entry, str):
            entry = {"path": entry}
        if not isinstance(entry, dict):
            raise ConfigError(f"sources[{i}] must be a path or a mapping, got {entry!r}")
        types = field_types(SourceSpec)
        unknown = set(entry) - set(types)
        if unknown:
            raise ConfigError(f"unknown field(s) in sources[{i}]: {', '.join(sorted(map(str, unknown)))}")
        for k, v in entry.items():
            check_type(f"sources[{i}].{k}", types[k], v)
        try:
            out.append(SourceSpec(**entry))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"sources[{i}]: {e}") from None
    return tuple(out)




def _nested(name: str, cls: type, base: Any, value: Any) -> Any:
    if not isinstance(value, dict):
        raise ConfigError(f"config field {name!r} must be a mapping")
    types = field_types(cls)
    unknown = set(value) - set(types)
    if unknown:
        def why(k: str) -> str:
            if f"{name}.{k}" not in _RENAMED:
                return k
            new = _RENAMED[f"{name}.{k}"]
            return f"{k} (now {new})" if new else f"{k} (removed: it was never used)"
        raise ConfigError(f"unknown field(s) in {name!r}: {', '.join(why(str(k)) for k in sorted(map(str, unknown)))}")
    value = dict(value)
    for k, v in value.items():
        check_type(f"{name}.{k}", types[k], v)
        if isinstance(v, list):   # YAML lists; frozen configs hold tuples
            value[k] = tuple(tuple(x) if isinstance(x, list) else x for x in v)
    try:
        return dataclasses.replace(base, **value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{name}: {e}") from None


def describe_sources(cfg: SimConfig) -> str:
    """The scenario, or what the cameras' recordings are (for titles)."""
    recorded = [os.path.basename(s.path) for s in cfg.sources if not s.synthetic]
    if not recorded:
        return cfg.scenario
    names = ", ".join(dict.fromkeys(recorded))
    return names if len(names) < 60 else f"{len(recorded)} recordings"


class _Loader(yaml.SafeLoader):
    """YAML as people write configs: ``1e-4`` and ``1e3`` are numbers (as in
    YAML 1.2), not the strings YAML 1.1 makes of them."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789"))


def load_config(path: str, base: SimConfig | None = None) -> SimConfig:
    """Read a YAML config file over ``base``; any problem is a :class:`ConfigError`."""
    if os.path.isdir(path):
        raise ConfigError(f"config file {path} is a directory; give a YAML file")
    try:
        with open(path, encoding="utf-8") as f:
            values = yaml.load(f, Loader=_Loader)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not text (YAML)") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    return config_from_dict({} if values is None else values, base)


def config_to_dict(cfg: SimConfig) -> dict[str, Any]:
    """Plain values (for YAML and Parquet metadata) that :func:`config_from_dict` reads back."""
    d = dataclasses.asdict(cfg)
    d["strategies"] = list(cfg.strategies)
    return _plain(d)


def _plain(value: Any) -> Any:
    """Tuples as lists, so that YAML writes plain lists."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
