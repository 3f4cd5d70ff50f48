"""The Ray runner: the loop of :mod:`driftlab.platform.sim` spread over Ray.

One actor per camera (``camera-0`` ...), the priority manager (``manager``),
the teacher on Ray Serve, and retraining on Ray Train. The driver runs the
same :class:`~driftlab.platform.sim.Simulation` as the inline runner, over
:class:`~driftlab.actors.camera.RayCameras` and
:class:`~driftlab.actors.manager.RayManager`: it only sequences ticks, the
cameras work in parallel inside each step, uploads go from camera actors to
the manager as object references, and both runners give the same table for
the same seed.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from typing import Callable

import pandas as pd
import ray
from ray import cloudpickle

from driftlab.platform.config import SimConfig
from driftlab.platform.runner import build_fleet, run_strategies, set_determinism
from driftlab.platform.sim import Simulation
from driftlab.platform.strategies import Strategy, parse_strategies
from driftlab.platform.validation import ConfigError, check_non_negative, check_whole
from driftlab.platform.zoo import teacher_checkpoint

from .camera import CameraActor, CameraProxy, RayCameras
from .manager import ManagerActor, RayManager
from .trainer import TrainPool

__all__ = ["RayOptions", "ResourceError", "start_ray", "plan_resources", "run_on_ray"]

NAMESPACE = "driftlab"
# Camera actors infer a few frames at a time, all at once: OpenMP threads that
# spin between those small calls steal the cores the other cameras compute
# on. (Training keeps the default: passive waiting halves its speed.)
CAMERA_ENV = {"env_vars": {"OMP_WAIT_POLICY": "PASSIVE"}}


class ResourceError(ConfigError):
    """The run asks for more than the Ray cluster has, or for a negative amount."""


@dataclass(frozen=True)
class RayOptions:
    """Where and how the loop runs on Ray.

    Attributes:
        address: an existing cluster (``"auto"``, ``ray://...``); None starts
            an embedded local Ray (or uses ``RAY_ADDRESS`` when set).
        num_cpus: logical CPUs of the embedded Ray (default: enough for the run,
            at least the machine's cores).
        cpus_per_camera: logical CPUs each camera actor reserves.
        gpus_per_camera: GPU fraction each camera actor reserves (0: CPU).
        teacher_replicas: Serve replicas of the teacher.
        teacher_batch: most uploads one batched teacher call serves.
        teacher_gpus: GPU fraction per teacher replica (None: 0.25 when the
            cluster has GPUs, else 0).
        train_workers: Ray Train workers running jobs.
        train_gpus: GPU fraction per Train worker (None: 0.5 when the cluster
            has GPUs, else 0).
        http_port: port of Serve's HTTP proxy (the teacher's route).
    """

    address: str | None = None
    num_cpus: float | None = None
    cpus_per_camera: float = 0.25
    gpus_per_camera: float = 0.0
    teacher_replicas: int = 1
    teacher_batch: int = 16
    teacher_gpus: float | None = None
    train_workers: int = 1
    train_gpus: float | None = None
    http_port: int = 8000

    def __post_init__(self):
        try:
            check_non_negative(self, "cpus_per_camera", "gpus_per_camera")
            check_whole(self, "teacher_replicas", "teacher_batch", "train_workers", "http_port", minimum=1)
            for name in ("num_cpus", "teacher_gpus", "train_gpus"):
                if getattr(self, name) is not None:
                    check_non_negative(self, name)
        except ConfigError as e:
            raise ResourceError(str(e)) from None


_TEACHER_CPUS, _MANAGER_CPUS, _TRAIN_CPUS = 0.5, 0.25, 1.0


def plan_resources(cfg: SimConfig, opts: RayOptions, available: dict[str, float]) -> dict[str, float]:
    """What the run reserves, per part; a :class:`ResourceError` naming the
    shortfall when ``available`` (the cluster's resources) cannot hold it."""
    has_gpu = available.get("GPU", 0) > 0
    teacher_gpus = opts.teacher_gpus if opts.teacher_gpus is not None else (0.25 if has_gpu else 0.0)
    train_gpus = opts.train_gpus if opts.train_gpus is not None else (0.5 if has_gpu else 0.0)
    need = {
        "CPU": cfg.cameras * opts.cpus_per_camera + opts.teacher_replicas * _TEACHER_CPUS
        + _MANAGER_CPUS + opts.train_workers * _TRAIN_CPUS,
        "GPU": cfg.cameras * opts.gpus_per_camera + opts.teacher_replicas * teacher_gpus
        + opts.train_workers * train_gpus,
    }
    for res, amount in need.items():
        have = available.get(res, 0.0)
        if amount > have + 1e-9:
            raise ResourceError(
                f"the run needs {amount:g} {res}s but the Ray cluster has {have:g}: "
                f"{cfg.cameras} cameras x {getattr(opts, f'{res.lower()}s_per_camera'):g}, "
                f"{opts.teacher_replicas} teacher replica(s), the manager and "
                f"{opts.train_workers} Train worker(s). Lower --cameras or the per-part "
                f"requests{', or add GPU nodes' if res == 'GPU' else ', or raise --num-cpus'}.")
    return {"teacher_gpus": teacher_gpus, "train_gpus": train_gpus, **need}


def start_ray(cfg: SimConfig, opts: RayOptions) -> str:
    """Connect to ``opts.address`` (or ``RAY_ADDRESS``), else start a local
    Ray sized for the run; returns the dashboard URL ('' without one)."""
    if ray.is_initialized():
        return _dashboard_url(None)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = opts.address or os.environ.get("RAY_ADDRESS")
    if address:
        ctx = ray.init(address=address, namespace=NAMESPACE)
    else:
        rough = plan_resources(cfg, opts, {"CPU": math.inf, "GPU": math.inf})
        cpus = opts.num_cpus or max(os.cpu_count() or 1, math.ceil(rough["CPU"]))
        ctx = ray.init(num_cpus=cpus, namespace=NAMESPACE, include_dashboard=True,
                       configure_logging=True, logging_level="warning")
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return _dashboard_url(ctx)


def _dashboard_url(ctx) -> str:
    url = getattr(ctx, "dashboard_url", "") or ""
    if not url:
        try:
            from ray._private.worker import global_worker

            url = global_worker.node.address_info.get("webui_url", "") or ""
        except Exception:
            url = ""
    return url if not url or url.startswith("http") else f"http://{url}"


def run_on_ray(cfg: SimConfig, opts: RayOptions = RayOptions(), out_dir: str | None = None,
               progress: bool = True, log: Callable[[str], None] = print,
               after_tick: Callable[[str, int], None] | None = None) -> pd.DataFrame:
    """Run every strategy of ``cfg`` on the Ray cluster ``ray.init`` connected
    to; same outputs as :func:`driftlab.platform.runner.run_inline`.
    ``after_tick(strategy, tick)`` is called after each tick (tests use it to
    inject faults)."""
    from ray import serve

    from driftlab.deployments.teacher import APP_NAME, QUIET, TeacherOptions, deploy_teacher

    strategies = parse_strategies(cfg)
    _ship_by_value(strategies)
    set_determinism()
    plan = plan_resources(cfg, opts, ray.cluster_resources())
    fleet = build_fleet(cfg, log)
    checkpoint = teacher_checkpoint(cfg.world, cfg.teacher, cfg.teacher_checkpoint, log=log)
    serve.start(http_options={"host": "127.0.0.1", "port": opts.http_port}, logging_config=QUIET)
    teacher = deploy_teacher(TeacherOptions(
        checkpoint, cfg.teacher, cfg.world.num_classes, cfg.world.size,
        replicas=opts.teacher_replicas, max_batch_size=opts.teacher_batch, num_cpus=_TEACHER_CPUS,
        num_gpus=plan["teacher_gpus"], genkd_checkpoint=fleet.genkd_checkpoint))
    pool = TrainPool(opts.train_workers, cpus_per_worker=_TRAIN_CPUS, gpus_per_worker=plan["train_gpus"])
    # Constructor arguments stay referenced for the whole run: a restarted
    # camera actor is built from them again.
    state_dicts = [{k: v.cpu() for k, v in s.state_dict().items()} for s in fleet.students]
    states = [ray.put(d) for d in state_dicts]
    shared = {id(s): ray.put(s) for s in fleet.sources}  # a video file is put once for all
    cameras = RayCameras([CameraProxy(CameraActor.options(
        name=f"camera-{i}", num_cpus=opts.cpus_per_camera, num_gpus=opts.gpus_per_camera,
        runtime_env=CAMERA_ENV,
    ).remote(i, shared[id(src)], states[i], cfg, teacher)) for i, src in enumerate(fleet.sources)])
    manager = RayManager(ManagerActor.options(name="manager", num_cpus=_MANAGER_CPUS).remote(
        cfg, state_dicts, pool.client(), fleet.teacher_cvae), log)
    try:
        sims = [Simulation(cfg, s, fleet, cameras, manager) for s in strategies]
        return run_strategies(cfg, sims, out_dir, progress, log, after_tick)
    finally:
        for actor in [manager.actor, *cameras.actors]:
            ray.kill(actor)
        pool.close()
        serve.delete(APP_NAME)


def _ship_by_value(strategies: list[Strategy]) -> None:
    """Strategies defined outside the package (a user's own module, which
    Ray's workers may not be able to import) travel to the actors by value."""
    for s in strategies:
        for cls in (s.definition.policy, s.definition.manager):
            module = sys.modules.get(cls.__module__)
            if module is not None and not cls.__module__.startswith("driftlab.") and cls.__module__ != "__main__":
                cloudpickle.register_pickle_by_value(module)
