"""The Ray runner: the loop of :mod:`driftlab.platform.sim` spread over Ray.

Each strategy of a comparison runs as its own fleet, all at once: camera-group
actors (``edgesync/cameras-0`` ..., each hosting a shard of the cameras,
spread over the cluster's nodes) and a priority manager
(``edgesync/manager``); the fleets share the teacher on Ray Serve and one
Ray Train pool. The driver runs the same
:class:`~driftlab.platform.sim.Simulation` as the inline runner, one thread
per strategy, over :class:`~driftlab.actors.camera.RayCameras` and
:class:`~driftlab.actors.manager.RayManager`: it only sequences ticks and
receives the frame rows; the camera groups work in parallel inside each
step, their uploads go to the manager as object references and the weights
back as object references; both runners give the same table for the same seed.
"""
from __future__ import annotations

import logging
import math
import os
import sys
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterator

import pandas as pd
import ray
import torch
from ray import cloudpickle

from driftlab.platform.config import SimConfig
from driftlab.platform.models import default_device
from driftlab.platform.runner import build_fleet, run_strategies, set_determinism
from driftlab.platform.camera import shard
from driftlab.platform.sim import Simulation
from driftlab.platform.strategies import Strategy, parse_strategies
from driftlab.platform.validation import ConfigError, check_non_negative, check_whole
from driftlab.platform.pretrained import StudentJob

from .camera import CameraGroupActor, CameraProxy, RayCameras
from .manager import ManagerActor, RayManager
from .trainer import TrainPool, on_this_node

__all__ = ["NAMESPACE", "WORKER_ENV", "RayOptions", "ResourceError", "start_ray", "start_local_cluster",
           "plan_resources", "group_size", "run_on_ray", "train_students_on_ray"]

NAMESPACE = "driftlab"
# Every process of a run (camera groups, the teacher, Train workers) runs
# torch on OpenMP threads. GNU OpenMP's threads spin before they sleep:
# processes sharing a node steal each other's cores. 2 cores, default preset
# at 300 s, five fleets at once: 566 s spinning, 590 s with a short spin
# (GOMP_SPINCOUNT=10000), 405 s passive, although passive waiting makes a
# training job alone 1.7x slower (docs/results/log.md). A user's own setting wins.
WORKER_ENV = {k: os.environ[k] for k in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY") if k in os.environ} or \
    {"OMP_WAIT_POLICY": "PASSIVE"}


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
        cameras_per_actor: cameras one camera-group actor hosts (None:
            :func:`group_size`'s default from the fleet and the cluster).
        cpus_per_camera: logical CPUs a group actor reserves per camera.
        gpus_per_camera: GPU fraction a group actor reserves per camera (0: CPU).
        teacher_replicas: Serve replicas of the teacher.
        teacher_batch: most uploads one batched teacher call serves.
        teacher_gpus: GPU fraction per teacher replica (None: 0.25 when the
            cluster has GPUs, else 0).
        train_workers: Ray Train workers running jobs.
        train_gpus: GPU fraction per Train worker (None: 0.5 when the cluster
            has GPUs, else 0).
        http_host: address Serve's HTTP proxy (the teacher's route) binds to:
            this machine only unless you open it (``0.0.0.0``; Serve's HTTP
            route has no authentication of its own).
        http_port: its port.
        strategies_at_once: strategies whose fleets run at the same time
            (None: all); a fleet's actors start with its strategy. Fewer
            at once need fewer resources (on 2 cores one at a time was
            slower: docs/results/log.md).
    """

    address: str | None = None
    num_cpus: float | None = None
    cameras_per_actor: int | None = None
    cpus_per_camera: float = 0.25
    gpus_per_camera: float = 0.0
    teacher_replicas: int = 1
    teacher_batch: int = 16
    teacher_gpus: float | None = None
    train_workers: int = 1
    train_gpus: float | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8000
    strategies_at_once: int | None = None

    def __post_init__(self):
        try:
            check_non_negative(self, "cpus_per_camera", "gpus_per_camera")
            check_whole(self, "teacher_replicas", "teacher_batch", "train_workers", "http_port", minimum=1)
            for name in ("cameras_per_actor", "strategies_at_once"):
                if getattr(self, name) is not None:
                    check_whole(self, name, minimum=1)
            for name in ("num_cpus", "teacher_gpus", "train_gpus"):
                if getattr(self, name) is not None:
                    check_non_negative(self, name)
        except ConfigError as e:
            raise ResourceError(str(e)) from None


_TEACHER_CPUS, _TRAIN_CPUS = 0.5, 1.0   # a manager reserves none (it lives on the driver's node)
_TRAIN_START_S = 300
_MAX_PER_ACTOR = 32  # one process infers ~100 cameras at 2 fps in real time on one core
def group_size(cameras: int, nodes: int = 1) -> int:
    """Default cameras per group actor: at least one group per node (so a
    cluster spreads the fleet), at most :data:`_MAX_PER_ACTOR` per group."""
    groups = min(cameras, max(nodes, math.ceil(cameras / _MAX_PER_ACTOR)))
    return math.ceil(cameras / max(1, groups))


def plan_resources(cfg: SimConfig, opts: RayOptions, available: dict[str, float],
                   fleets: int = 1) -> dict[str, float]:
    """What the run reserves, per part, with ``fleets`` strategies' camera
    groups at once (their managers reserve nothing); a :class:`ResourceError` naming the
    shortfall when ``available`` (the cluster's resources) cannot hold it."""
    has_gpu = available.get("GPU", 0) > 0
    teacher_gpus = opts.teacher_gpus if opts.teacher_gpus is not None else (0.25 if has_gpu else 0.0)
    train_gpus = opts.train_gpus if opts.train_gpus is not None else (0.5 if has_gpu else 0.0)
    need = {
        "CPU": fleets * cfg.cameras * opts.cpus_per_camera + opts.teacher_replicas * _TEACHER_CPUS + opts.train_workers * _TRAIN_CPUS,
        "GPU": fleets * cfg.cameras * opts.gpus_per_camera + opts.teacher_replicas * teacher_gpus
        + opts.train_workers * train_gpus,
    }
    for res, amount in need.items():
        have = available.get(res, 0.0)
        if amount > have + 1e-9:
            raise ResourceError(
                f"the run needs {amount:g} {res}s but the Ray cluster has {have:g}: "
                f"{fleets} strategies at once x ({cfg.cameras} cameras x "
                f"{getattr(opts, f'{res.lower()}s_per_camera'):g}), "
                f"{opts.teacher_replicas} teacher replica(s) and "
                f"{opts.train_workers} Train worker(s). Lower --cameras, --strategies or the per-part "
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
        ctx = ray.init(address=address, namespace=NAMESPACE, runtime_env={"env_vars": WORKER_ENV})
    else:
        rough = plan_resources(cfg, opts, {"CPU": math.inf, "GPU": math.inf}, len(cfg.strategies))
        cpus = opts.num_cpus or max(os.cpu_count() or 1, math.ceil(rough["CPU"]))
        ctx = ray.init(num_cpus=cpus, namespace=NAMESPACE, include_dashboard=True,
                       configure_logging=True, logging_level="warning", runtime_env={"env_vars": WORKER_ENV})
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return _dashboard_url(ctx)


def start_local_cluster(nodes: int, cpus_per_node: float):
    """A local ``nodes``-node Ray cluster on this machine (``ray.cluster_utils.Cluster``:
    a head and ``nodes - 1`` worker nodes of ``cpus_per_node`` logical CPUs
    each), connected to; returns the cluster (``remove_node``, ``shutdown``)."""
    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": cpus_per_node})
    for _ in range(nodes - 1):
        cluster.add_node(num_cpus=cpus_per_node)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, namespace=NAMESPACE, logging_level="warning",
             runtime_env={"env_vars": WORKER_ENV})
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    return cluster


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
               after_tick: Callable[[str, int], None] | None = None, resume: bool = False) -> pd.DataFrame:
    """Run every strategy of ``cfg`` at once on the Ray cluster ``ray.init``
    connected to; same outputs (and ``resume``) as
    :func:`driftlab.platform.runner.run_inline`. ``after_tick(strategy,
    tick)`` is called after each tick (tests use it to inject faults)."""
    from ray import serve

    from driftlab.deployments.teacher import APP_NAME, QUIET, TeacherOptions, deploy_teacher

    strategies = parse_strategies(cfg)
    _ship_by_value(strategies)
    set_determinism()
    at_once = min(opts.strategies_at_once or len(strategies), len(strategies))
    plan = plan_resources(cfg, opts, ray.cluster_resources(), at_once)
    fleet = build_fleet(cfg, log, train_students=train_students_on_ray)
    log("starting the Serve teacher and the Ray Train pool ...")
    serve.start(http_options={"host": opts.http_host, "port": opts.http_port}, logging_config=QUIET)
    teacher = deploy_teacher(TeacherOptions(
        fleet.teacher_spec, cfg.num_classes, cfg.frame_size,
        replicas=opts.teacher_replicas, max_batch_size=opts.teacher_batch, num_cpus=_TEACHER_CPUS,
        num_gpus=plan["teacher_gpus"], genkd_checkpoint=fleet.genkd_checkpoint))
    pool = TrainPool(opts.train_workers, cpus_per_worker=_TRAIN_CPUS, gpus_per_worker=plan["train_gpus"])
    # Train's workers take whole CPUs on one node: place them before the
    # camera groups spread their fractions over every node.
    if not pool.wait_ready(timeout=_TRAIN_START_S):
        pool.close(timeout=5)
        serve.delete(APP_NAME)
        raise ResourceError(f"Ray Train could not start {opts.train_workers} worker(s) of {_TRAIN_CPUS:g} CPU "
                            f"within {_TRAIN_START_S} s: no node has that much free. Lower --train-workers "
                            f"or add nodes.")
    nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
    # The managers hold each strategy's server state: they live on the
    # driver's node (a cluster's head), which outlives worker nodes, and
    # reserve no CPU there, so nothing placed before them can keep them out.
    on_driver_node = on_this_node()
    shards = shard(cfg.cameras, opts.cameras_per_actor or group_size(cfg.cameras, nodes))
    # Constructor arguments stay referenced for the whole run: a restarted
    # group actor is built from them again.
    states = [ray.put({k: v.cpu() for k, v in s.state_dict().items()}) for s in fleet.students]
    fleet.students.clear()  # the object store holds them now; the driver needs none
    sources = {id(s): ray.put(s) for s in fleet.sources}  # a video file is put once for all

    def fleet_of(strategy: Strategy) -> tuple[RayCameras, RayManager]:
        log(f"{strategy.name}: {cfg.cameras} cameras in {len(shards)} group actor(s) of up to "
            f"{len(shards[0])} on {nodes} node(s)")
        groups = [CameraProxy(CameraGroupActor.options(
            name=f"{strategy.name}/cameras-{g}", num_cpus=opts.cpus_per_camera * len(cams),
            num_gpus=opts.gpus_per_camera * len(cams), scheduling_strategy="SPREAD",
        ).remote(list(cams), [sources[id(fleet.sources[c])] for c in cams], [states[c] for c in cams],
                 cfg, teacher)) for g, cams in enumerate(shards)]
        manager = ManagerActor.options(name=f"{strategy.name}/manager", num_cpus=0,
                                       scheduling_strategy=on_driver_node).remote(
            cfg, states, pool.client(), fleet.teacher_cvae)
        return RayCameras(groups, shards), RayManager(manager, log)

    fleets = [_Fleet(partial(fleet_of, s)) for s in strategies]
    log(f"{len(strategies)} strategies, {at_once} at a time")
    try:
        sims = [Simulation(cfg, s, fleet, f.part(0), f.part(1)) for s, f in zip(strategies, fleets)]
        return run_strategies(cfg, sims, out_dir, progress, log, after_tick, at_once=at_once, resume=resume)
    finally:
        for f in fleets:
            f.close()
        pool.close()
        serve.delete(APP_NAME)


class _Fleet:
    """A strategy's camera groups and manager, created when the strategy
    starts (its :class:`Simulation` starts its cameras first)."""

    def __init__(self, create: Callable[[], tuple[RayCameras, RayManager]]):
        self.create, self.parts = create, None

    def part(self, i: int) -> "_Deferred":
        return _Deferred(self, i)

    def close(self) -> None:
        if self.parts is not None:
            cameras, manager = self.parts
            for actor in [manager.actor, *cameras.actors]:
                ray.kill(actor)


class _Deferred:
    """The cameras (0) or the manager (1) of a :class:`_Fleet`, started on first use."""

    def __init__(self, fleet: _Fleet, i: int):
        self._fleet, self._i = fleet, i

    def start(self, strategy: Strategy) -> None:
        if self._fleet.parts is None:
            self._fleet.parts = self._fleet.create()
        self._fleet.parts[self._i].start(strategy)

    def __getattr__(self, name: str):
        return getattr(self._fleet.parts[self._i], name)


@ray.remote(num_cpus=1)
def _train_student(job: StudentJob, threads: int) -> dict:
    set_determinism(threads)
    return job.run(default_device())


def train_students_on_ray(jobs: list[StudentJob], log: Callable[[str], None] = print) -> Iterator[tuple[int, dict]]:
    """:data:`~driftlab.platform.pretrained.TrainStudents` as Ray tasks, as many at
    once as the cluster has cores for (each uses the driver's torch threads,
    so the weights equal the inline runner's), on a GPU where the cluster has one."""
    threads = torch.get_num_threads()
    cores = _cores()
    gpus = 0.5 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    at_once = max(1, int(cores // threads))
    waiting, running = list(enumerate(jobs)), {}
    while waiting or running:
        while waiting and len(running) < at_once:
            i, job = waiting.pop(0)
            running[_train_student.options(num_gpus=gpus).remote(job, threads)] = i
        [done], _ = ray.wait(list(running), num_returns=1)
        yield running.pop(done), ray.get(done)


def _cores() -> float:
    """Cores the cluster can train on: this machine's when every node runs on
    it (an embedded or local test cluster, whose logical CPUs are set above
    its cores), else the cluster's logical CPUs."""
    here = ray.util.get_node_ip_address()
    if all(n["NodeManagerAddress"] == here for n in ray.nodes() if n.get("Alive")):
        return os.cpu_count() or 1
    return ray.cluster_resources().get("CPU", 1)


def _ship_by_value(strategies: list[Strategy]) -> None:
    """Strategies defined outside the package (a user's own module, which
    Ray's workers may not be able to import) travel to the actors by value."""
    for s in strategies:
        for cls in (s.definition.policy, s.definition.manager):
            module = sys.modules.get(cls.__module__)
            if module is not None and not cls.__module__.startswith("driftlab.") and cls.__module__ != "__main__":
                cloudpickle.register_pickle_by_value(module)
