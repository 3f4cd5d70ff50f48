"""Job plugins: what a fleet adds to every retraining job, whatever the strategy.

A plugin keeps its own per-camera state on the server and hooks into the job's
life, the way Avalanche's ``LwFPlugin`` adds its loss term without the training
loop knowing it:

- :attr:`JobPlugin.columns`: per-sample columns (of :data:`UPLOAD_COLUMNS`)
  stored with each upload, computed once whoever asks;
- :meth:`JobPlugin.extend`: the job's samples (add or drop some);
- :meth:`JobPlugin.fit_plugin`: a part that runs inside
  :func:`~driftlab.platform.training.fit` (extra parameters, epoch phases,
  loss terms; see :class:`~driftlab.platform.training.FitPlugin`);
- :meth:`JobPlugin.after_job`: the state that part returned;
- :meth:`JobPlugin.cost_factor`: the job's cost on the virtual clock;
- :meth:`JobPlugin.after_upload`, :meth:`JobPlugin.new_model`: each upload
  and each job's model, for a plugin that deploys models of its own
  (:class:`~driftlab.platform.zoo.ModelZoo`, through :meth:`Server.swap`).

The fleet's plugins come from its config (:func:`job_plugins`): ``borrow``
> 0 adds :class:`Borrowing`, ``distill: genkd`` adds seed 2's
:class:`~driftlab.platform.distill.frames.GenKDPlugin`; a strategy's
``+zoo`` adds :class:`~driftlab.platform.zoo.ModelZoo`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .scheduling import Samples, closest, condition_stats

if TYPE_CHECKING:
    from .camera import Upload
    from .config import CostModel, SimConfig
    from .scheduling import Request
    from .strategies import Strategy
    from .server import Server
    from .training import FitPlugin

__all__ = ["JobPlugin", "Borrowing", "UPLOAD_COLUMNS", "job_plugins"]

#: Per-sample columns a plugin may ask the server to store with an upload's
#: frames, by name; each is computed once per upload, whoever asks.
UPLOAD_COLUMNS: dict[str, Callable[[Upload], np.ndarray]] = {
    "condition": lambda up: condition_stats(up.images),   # (N, 6): mean and spread of each colour channel
}


class JobPlugin:
    """Hooks a job plugin may fill in (each a no-op here)."""

    name = "plugin"
    columns: tuple[str, ...] = ()   # names in UPLOAD_COLUMNS to store with each upload's frames

    def extend(self, server: Server, camera: int, samples: Samples, cutoff: float, start: float) -> Samples:
        """The samples of camera ``camera``'s job (requested at ``cutoff``, starting at ``start``)."""
        return samples

    def fit_plugin(self, camera: int, samples: Samples) -> FitPlugin | None:
        """The part that trains inside the job, or ``None``."""
        return None

    def after_job(self, camera: int, state: Any) -> None:
        """What this plugin's fit part returned (``None`` if it did not run)."""

    def after_upload(self, server: Server, upload: Upload, request: Request) -> None:
        """``upload`` is stored and its labels are back at ``request.ready``."""

    def new_model(self, server: Server, camera: int, state: dict, cutoff: float, deployed: float) -> None:
        """A job trained on camera ``camera``'s uploads up to ``cutoff`` gave
        it ``state``, at the camera at stream time ``deployed``."""

    def cost_factor(self, costs: CostModel) -> float:
        """The job's sample-epochs cost this many plain ones."""
        return 1.0

    def lookback(self) -> float:
        """Stream seconds before a job's cutoff whose uploads :meth:`extend` reads."""
        return 0.0


class Borrowing(JobPlugin):
    """Every job adds to its camera's samples up to ``k`` of the other cameras'
    uploads of the last ``window`` seconds (labelled by the job's start), the
    closest in condition (mean and spread of each colour channel) to the
    camera's newest upload: cameras that met a condition first teach the ones
    that meet it later (in the spirit of ECCO's correlated-drift groups).

    Each upload's conditions are computed once, when it arrives."""

    name = "borrow"
    columns = ("condition",)

    def __init__(self, k: int, window: float):
        self.k, self.window = k, window

    def lookback(self) -> float:
        return self.window

    def extend(self, server: Server, camera: int, samples: Samples, cutoff: float, start: float) -> Samples:
        pool = Samples.concat([store.select(cutoff - self.window, cutoff, ready_by=start)
                               for j, store in enumerate(server.stores) if j != camera])
        newest = server.stores[camera].newest(cutoff).columns.get("condition", np.empty((0, 6), np.float32))
        return Samples.concat([samples, closest(pool, newest, self.k)])


def job_plugins(cfg: SimConfig, teacher_cvae: dict | None = None, strategy: Strategy | None = None,
                ) -> list[JobPlugin]:
    """The job plugins ``cfg`` asks for (genkd needs the teacher CVAE's
    weights), and the server components of ``strategy`` (``+zoo``)."""
    plugins: list[JobPlugin] = []
    if cfg.borrow > 0:
        plugins.append(Borrowing(cfg.borrow, cfg.borrow_window))
    if cfg.distill == "genkd":
        from .distill.frames import GenKDPlugin

        if teacher_cvae is None:
            raise ValueError("distill 'genkd' needs the teacher's seed 2 CVAE")
        plugins.append(GenKDPlugin(teacher_cvae))
    if strategy is not None and "zoo" in strategy.components:
        from .zoo import ModelZoo

        plugins.append(ModelZoo(cfg.zoo, cfg.cameras))
    return plugins
