"""Where the queue's jobs run: a *backend* takes one job at a time from Easel's job queue.

The queue (:mod:`webui.queue`) stays the source of truth for order, positions and
cancellation; it hands a job to its backend only when the backend has a free worker
(:meth:`Backend.capacity`: the queue runs at most that many jobs at once, so a job is
pulled by a free worker, never pushed to a busy one). Every backend:

* takes the same job: a :class:`webui.jobs.GenerationRequest` (plain data, see
  :meth:`GenerationRequest.to_dict`) and the :class:`webui.jobs.Job` that reports it;
* emits the same events on that job (``step`` with ``step``/``steps``/``image``/``images``
  and a preview every few steps, ``image`` with ``index``/``seed``/``path``) and returns a
  :class:`webui.jobs.GenerationResult` (PIL images with their seeds and infotexts);
* honours :meth:`Job.interrupt` (stop at the next step, keep what is done) and
  :meth:`Job.skip` (end this image, go on with the next);
* saves the images, when the request asks for it, in the front's own outputs folder.

Two backends exist:

``local`` (:class:`webui.backends.local.InProcessBackend`, the default)
    runs the job on the queue's worker thread through :func:`webui.generation.run_generation`,
    as Easel always did. It never imports ``ray``.
``ray`` (:class:`webui.backends.ray_serve.RayServeBackend`)
    sends the job to a Ray Serve deployment of Easel workers (one replica per GPU, or CPU
    replicas) and turns the events they stream back into the same job events.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Protocol

from webui.errors import EaselError

if TYPE_CHECKING:
    from webui.context import EaselContext
    from webui.jobs import GenerationRequest, GenerationResult, Job

BACKENDS = ("local", "ray")
#: Ray's switch for single-machine clusters (named for Windows and macOS, where it is the default): with it
#: off, every Ray process of a cluster started here listens on 127.0.0.1 only. Without it, on Linux, the
#: GCS server, the raylet and the workers listen on all interfaces (measured with ``ss -ltnp``, Ray 2.60).
RAY_SINGLE_MACHINE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

log = logging.getLogger(__name__)


def bind_ray_to_localhost() -> bool:
    """Make the Ray cluster this process starts listen on 127.0.0.1 only; False when it is too late.

    Ray reads the switch when it is first imported, so it must be set before ``import ray``
    (its processes inherit it). Anyone who reaches Ray's ports can run code as this user.
    """
    if os.environ.get(RAY_SINGLE_MACHINE_SWITCH) not in (None, "0"):
        log.warning("%s is set: the Ray cluster may listen beyond this machine", RAY_SINGLE_MACHINE_SWITCH)
        return False
    os.environ[RAY_SINGLE_MACHINE_SWITCH] = "0"
    if "ray" in sys.modules:
        from ray._private import ray_constants

        if ray_constants.ENABLE_RAY_CLUSTER:
            log.warning("ray was imported before Easel could make it listen on 127.0.0.1 only: the cluster it "
                        "starts listens on every interface")
            return False
    return True


class RequeueJob(EaselError):
    """Raised by :meth:`Backend.run`: the job could not run to its end through no fault of its own.

    Its worker died under it (process killed, node lost), or declined it (its GPU was taken
    by a training run). The queue puts the job back at the head of the line, where the next
    free worker takes it, and tells its followers: ``message`` becomes the job's
    :attr:`Job.message`; with ``attempt`` (the attempt that comes next, 2 for the first retry)
    the job also gets a ``retried`` event.
    """

    def __init__(self, message: str, *, attempt: int | None = None) -> None:
        super().__init__(message)
        self.attempt = attempt


class Backend(Protocol):
    """What the job queue needs from a backend."""

    name: str
    """``local`` or ``ray``: shown in logs and the ``dispatched`` event."""

    def capacity(self) -> int:
        """How many jobs may run at once right now (free plus busy workers; 0 while none is up)."""

    def device_in_use(self) -> str | None:
        """Why no job can start now although jobs wait (something outside the queue, e.g. a training
        run, holds the device of every worker), or None. The queue asks about once a second."""

    def run(self, request: "GenerationRequest", job: "Job") -> "GenerationResult":
        """Run ``request`` to its end, reporting on ``job``; raise what the job failed with, or
        :class:`RequeueJob` to have the queue hand it out again."""

    def close(self) -> None:
        """Release the workers (the queue calls it when the app closes)."""


def create_backend(context: "EaselContext", kind: str = "local", **options: Any) -> Backend:
    """The backend ``kind`` for ``context``; ``options`` go to the Ray backend
    (:class:`webui.backends.ray_serve.RayServeBackend`: ``app_options``, ``address``, ``workers``, ...).

    ``ray`` is imported only here, only for ``kind="ray"``.
    """
    if kind == "local":
        from webui.backends.local import InProcessBackend

        return InProcessBackend(context)
    if kind == "ray":
        if options.get("address", "local") == "local":
            bind_ray_to_localhost()
        from webui.backends.ray_serve import RayServeBackend

        return RayServeBackend(context, **options)
    raise ValueError(f"unknown backend {kind!r}; one of {', '.join(BACKENDS)}")
