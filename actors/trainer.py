"""Retraining and distillation jobs on Ray Train, started once per simulation.

A ``TorchTrainer.fit()`` costs ~13 s of start-up on a small machine, far more
than one camera's job (a second or two), so :class:`TrainPool` runs one
long-lived fit whose workers take jobs from a queue until the pool closes.
Each job is self-contained and has a ``run(device)`` method returning
``(state_dict, result)``: a camera's retraining
(:class:`~driftlab.platform.server.JobInputs`) or a student's distillation
(:class:`~driftlab.platform.distill.DistillJob`). A worker runs it on its
Train device (a GPU when the pool has one) and sends back the new weights.

Each manager talks to the pool through its own :class:`TrainClient` (queue
handles, picklable): a job carries its client's results queue and the worker
answers there directly, so the managers of strategies running at once share
the pool. A job that raises is retried once, then reported as
failed (``None``) and the simulation goes on. If a worker dies (its process
killed, its node lost), Ray Train restarts the worker group
(``FailureConfig``) and each client runs again every job of its batch not
yet done (the jobs the dead workers held are gone; a job run twice gives
the same weights, the second answer is dropped), as it does a job whose
weights died with their worker. The queues live on the driver's
node, as Ray Train's controller does.
"""
from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Callable

import ray
from ray.exceptions import ObjectLostError
from ray.util.queue import Empty, Queue

__all__ = ["TrainPool", "TrainClient", "TrainPoolError", "on_this_node"]

_ATTEMPTS = 2  # a failed job is retried once
_POLL_S = 0.05  # how often an idle worker looks for a job (seconds)


class TrainPoolError(RuntimeError):
    """The Train run itself is gone (its restarts are spent)."""


def _worker_loop(config: dict) -> None:
    """The Ray Train function: run jobs from the queue until the pool closes."""
    import ray.train.torch

    from driftlab.platform.runner import set_determinism

    set_determinism()
    device = ray.train.torch.get_device()
    jobs, results, me = config["jobs"], config["results"], uuid.uuid4().hex
    results.put(("hello", me, None))
    while True:
        # Polled, not a blocking get: a worker killed while blocked in get()
        # would leave its call waiting in the queue actor, to swallow the next job.
        try:
            item = jobs.get_nowait()
        except Empty:
            time.sleep(_POLL_S)
            continue
        if item is None:
            jobs.put(None)  # let the other workers see the end too
            return
        job_id, [inputs_ref], reply = item
        try:
            state, fit_result = ray.get(inputs_ref).run(device)
            reply.put(("done", job_id, ([ray.put(state)], fit_result)))
        except Exception as e:  # a job's failure is reported, not fatal to the worker
            reply.put(("error", job_id, f"{type(e).__name__}: {e}"))


@dataclass
class TrainClient:
    """A manager's side of the pool: submit a batch of jobs, wait for all.
    Inputs and weights travel as object references through the queues.

    Attributes:
        jobs: the pool's queue of ``(job_id, [job ref], results)`` the workers take from.
        results: this client's own queue: the workers answer its jobs there
            (done, error), the pool tells it of restarts and the run's end
            (restart, dead), so several managers share one pool.
        prefix: this client's job-id prefix.
    """

    jobs: Queue
    results: Queue
    prefix: str

    def __post_init__(self):
        self._ids = itertools.count()
        self.failures: list[str] = []

    def run(self, batch: list, log: Callable[[str], None] = print) -> list:
        """Run every job of ``batch``; ``(state, FitResult)`` per job, ``None``
        for one that failed twice."""
        ids = [f"{self.prefix}-{next(self._ids)}" for _ in batch]
        # Queues carry object references (in lists, so Ray leaves them
        # unresolved): the data goes through the object store once.
        inputs = {i: [ray.put(job)] for i, job in zip(ids, batch)}
        attempts = dict.fromkeys(ids, 1)
        out: dict[str, object] = {}
        self._drain()
        for i in ids:
            self._put(i, inputs[i])
        while len(out) < len(ids):
            kind, job_id, payload = self.results.get()
            if kind == "dead":
                raise TrainPoolError(f"Ray Train run ended: {payload}")
            if kind != "restart" and (job_id not in inputs or job_id in out):
                continue  # a message of an earlier batch or a duplicate
            if kind == "restart":   # jobs the dead workers held are gone: run every unfinished one again
                todo = [i for i in ids if i not in out]
                log(f"train jobs: {payload}; running {len(todo)} unfinished job(s) again")
                for i in todo:
                    self._put(i, inputs[i])
            elif kind == "done":
                [state_ref], fit_result = payload
                try:
                    out[job_id] = (ray.get(state_ref), fit_result)
                except ObjectLostError:   # its worker (the weights' owner) died since: run it again
                    self._put(job_id, inputs[job_id])
            elif kind == "error":
                self._retry(job_id, inputs, attempts, out, payload, log)
        return [out[i] for i in ids]

    def _drain(self) -> None:
        """Drop what arrived while no batch ran (a restart that concerned none
        of the next batch's jobs, duplicate answers); the run's end still raises."""
        while True:
            try:
                kind, _, payload = self.results.get_nowait()
            except Empty:
                return
            if kind == "dead":
                raise TrainPoolError(f"Ray Train run ended: {payload}")

    def _put(self, job_id: str, inputs: list) -> None:
        self.jobs.put((job_id, inputs, self.results))

    def _retry(self, job_id, inputs, attempts, out, why: str, log) -> None:
        if attempts[job_id] < _ATTEMPTS:
            attempts[job_id] += 1
            log(f"train job {job_id} failed ({why}); retrying")
            self._put(job_id, inputs[job_id])
        else:
            msg = f"train job {job_id} failed {attempts[job_id]} times, last: {why}"
            log(msg)
            self.failures.append(msg)
            out[job_id] = None


def on_this_node():
    """A scheduling strategy that places an actor on this process's node (the
    driver's, which outlives worker nodes), and nowhere else."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)


def _queue() -> Queue:
    """A queue on the driver's node, taking no CPU."""
    return Queue(actor_options={"num_cpus": 0, "scheduling_strategy": on_this_node()})


class TrainPool:
    """One Ray Train run (``TorchTrainer``) serving jobs for a whole simulation.

    Args:
        num_workers: Train workers; each takes jobs from the queue, so a batch
            of several cameras' jobs runs in parallel.
        cpus_per_worker: logical CPUs per worker.
        gpus_per_worker: GPU fraction per worker (0: CPU).
        max_failures: worker-group restarts Ray Train may make.
        storage_path: where Ray Train keeps its run directory.
    """

    def __init__(self, num_workers: int = 1, cpus_per_worker: float = 1.0, gpus_per_worker: float = 0.0,
                 max_failures: int = 3, storage_path: str | None = None):
        from ray.train import FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer

        self.jobs, self.results = _queue(), _queue()
        self.num_workers = num_workers
        self._trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"jobs": self.jobs, "results": self.results},
            scaling_config=ScalingConfig(
                num_workers=num_workers, use_gpu=gpus_per_worker > 0,
                resources_per_worker={"CPU": cpus_per_worker,
                                      **({"GPU": gpus_per_worker} if gpus_per_worker > 0 else {})}),
            run_config=RunConfig(name=f"driftlab-jobs-{uuid.uuid4().hex[:8]}",
                                 storage_path=storage_path,
                                 failure_config=FailureConfig(max_failures=max_failures)),
        )
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._clients: list[Queue] = []
        self._thread = threading.Thread(target=self._fit, name="driftlab-train", daemon=True)
        self._thread.start()
        self._dispatcher = threading.Thread(target=self._dispatch, name="driftlab-train-results", daemon=True)
        self._dispatcher.start()

    def _fit(self) -> None:
        try:
            self._trainer.fit()
        except Exception as e:  # reported to whoever waits on a job
            self.results.put(("dead", None, f"{type(e).__name__}: {str(e).splitlines()[0]}"))

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every worker is up (Ray Train's start-up, ~13 s on 2 cores)."""
        return self._ready.wait(timeout)

    def client(self) -> TrainClient:
        """A new client with its own results queue (one per manager)."""
        queue = _queue()
        with self._lock:
            self._clients.append(queue)
        return TrainClient(self.jobs, queue, uuid.uuid4().hex[:8])

    def _dispatch(self) -> None:
        """Watch the worker group: when it restarts (more hellos than
        workers), tell every client (the jobs the dead workers held are gone);
        tell all when the run ends."""
        workers: set[str] = set()
        while True:
            kind, worker, payload = self.results.get()
            if kind == "closed":
                return
            if kind == "hello":
                if len(workers) >= self.num_workers:  # the group restarted
                    self._broadcast(("restart", None, "the Train worker group restarted (a worker died)"))
                    workers = set()
                workers.add(worker)
                if len(workers) >= self.num_workers:
                    self._ready.set()
            elif kind == "dead":
                self._ready.set()  # nothing to wait for any more
                self._broadcast(("dead", None, payload))

    def _broadcast(self, message: tuple) -> None:
        with self._lock:
            clients = list(self._clients)
        for q in clients:
            q.put(message)

    def close(self, timeout: float = 60.0) -> None:
        """Let the workers finish and the Train run end; free the queues."""
        try:
            self.jobs.put(None)
            self._thread.join(timeout)
            self.results.put(("closed", None, None))
            self._dispatcher.join(timeout)
        finally:
            with self._lock:
                clients = list(self._clients)
            for q in (self.jobs, self.results, *clients):
                q.shutdown(force=True)
