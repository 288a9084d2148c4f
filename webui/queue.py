"""The job queue of a device: every image job waits here, first in first out.

One worker thread owns the device and runs the jobs one after the other through the one
generation path (:func:`webui.generation.run_generation`), or, with a backend of several
workers (:mod:`webui.backends`, e.g. Ray Serve replicas), one thread per free worker: a job
is handed out only when a worker is free (``slots``), so the queue keeps the order,
the positions and the cancelling whatever runs the jobs. Callers — the txt2img, img2img
and Background tabs, the REST routes, the tests — :meth:`JobQueue.submit` a request and
follow the job's events (:meth:`webui.jobs.Job.wait_events`) or :meth:`JobQueue.wait` for
its result. A job from a second caller waits its turn and knows its place in line.

* ``queued`` events carry ``position`` (1 = next to run, counting the running job) whenever
  it changes; ``started``, ``step``, ``image`` and one final ``finished`` / ``failed``
  (``message``) / ``interrupted`` / ``cancelled`` event follow.
* :meth:`cancel` removes a job that has not started; a running job is interrupted instead
  (what it finished is kept).
* At most ``limit`` jobs wait (the ``queue.limit`` setting, default 32): one more is refused
  with :class:`QueueFullError` and a message; nothing accepted is lost.
"""

from __future__ import annotations

import collections
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable, Iterator

from webui.backends import RequeueJob
from webui.errors import EaselError
from webui.jobs import GenerationRequest, GenerationResult, Job

if TYPE_CHECKING:
    from webui.backends import Backend
    from webui.context import EaselContext
    from webui.extension_context import ExtensionContext

log = logging.getLogger(__name__)

DEFAULT_LIMIT = 32
HISTORY = 256
IDLE_SECONDS = 10.0
DEVICE_POLL_SECONDS = 1.0
LIMIT_SETTING = "queue.limit"
NO_FREE_WORKER = object()


class QueueFullError(EaselError):
    """The queue holds as many waiting jobs as it may; the message says so and what to do."""


class JobCancelledError(EaselError):
    """A job was cancelled before it started."""


class JobQueue:
    """FIFO queue with one worker thread for one device."""

    def __init__(self, run: Callable[[GenerationRequest, Job], GenerationResult],
                 limit: Callable[[], int] | int = DEFAULT_LIMIT, name: str = "easel-queue",
                 device_in_use: Callable[[], str | None] | None = None,
                 slots: Callable[[], int] | int = 1, on_close: Callable[[], None] | None = None) -> None:
        """``slots``: how many jobs may run at once (a backend's free plus busy workers; read
        often, so it must answer at once); ``on_close`` runs when the queue closes (the backend's
        ``close``)."""
        self._run = run
        self._slots = slots
        self._on_close = on_close
        self._limit = limit
        self._device_in_use = device_in_use or (lambda: None)
        self._name = name
        self._lock = threading.Lock()
        self._wakeup = threading.Condition(self._lock)
        self._pending: collections.deque[tuple[Job, GenerationRequest]] = collections.deque()
        self._jobs: collections.OrderedDict[str, Job] = collections.OrderedDict()
        self._running: list[Job] = []  # oldest first
        self._workers: set[threading.Thread] = set()
        self._closed = False

    # --- submitting and following ------------------------------------------------------

    @property
    def limit(self) -> int:
        return int(self._limit() if callable(self._limit) else self._limit)

    @property
    def slots(self) -> int:
        """How many jobs may run at once now (1 for the in-process backend)."""
        try:
            return max(0, int(self._slots() if callable(self._slots) else self._slots))
        except Exception:  # noqa: BLE001 - a backend that cannot tell runs nothing until it can
            log.exception("Could not read the number of free workers")
            return 0

    def submit(self, request: GenerationRequest, job: Job | None = None, *, over_limit: bool = False) -> Job:
        """Queue ``request``; returns its :class:`Job` at once. Raises :class:`QueueFullError` when full.

        ``over_limit=True`` queues it even when the limit is reached: for jobs accepted before
        (re-queued after a restart, see :mod:`webui.job_store`), which must not be lost.
        """
        job = job or Job()
        with self._lock:
            if self._closed:
                raise QueueFullError("The server is shutting down and takes no new jobs")
            if len(self._pending) >= self.limit and not over_limit:
                raise QueueFullError(f"The queue is full ({self.limit} jobs waiting): try again when some have "
                                     "finished, or raise the limit in Settings > Queue")
            job.enter_queue()
            self._pending.append((job, request))
            self._jobs[job.id] = job
            self._forget_old_jobs()
            self._ensure_workers()
            self._wakeup.notify_all()
        self._announce_positions()
        return job

    def wait(self, job: Job, timeout: float | None = None) -> GenerationResult:
        """Block until ``job`` ends; its result, or the error that ended it raised again."""
        seen = 0
        while not job.done:
            events = job.wait_events(seen, timeout=0.5 if timeout is None else min(timeout, 0.5))
            seen += len(events)
            if timeout is not None:
                timeout -= 0.5
                if timeout <= 0 and not job.done:
                    raise TimeoutError(f"job {job.id} did not end in time")
        if job.error is not None:
            raise job.error
        if job.result is None:
            raise JobCancelledError("The job was cancelled before it started")
        return job.result

    def generate(self, request: GenerationRequest, job: Job | None = None) -> GenerationResult:
        """Submit and wait; called on the worker thread itself (a job that runs a job) it runs at once."""
        if getattr(threading.current_thread(), "_easel_queue", None) is self:
            return self._run(request, job or Job())
        return self.wait(self.submit(request, job))

    def get(self, job_id: str) -> Job | None:
        """A job this queue has seen (waiting, running or ended)."""
        with self._lock:
            return self._jobs.get(job_id)

    def cancel(self, job: Job) -> str:
        """Cancel a waiting job (``"cancelled"``) or interrupt a running one (``"interrupted"``)."""
        with self._lock:
            for index, (queued, _) in enumerate(self._pending):
                if queued is job:
                    del self._pending[index]
                    break
            else:
                queued = None
        if queued is not None:
            job.interrupt()
            job.emit("cancelled", message="Cancelled before it started")
            self._announce_positions()
            return "cancelled"
        if not job.done:
            job.interrupt()
            return "interrupted"
        return job.status

    def snapshot(self) -> dict[str, Any]:
        """What runs and what waits: ``{"running": oldest running id or None, "running_jobs": [ids],
        "waiting": [ids], "limit": n}``."""
        with self._lock:
            return {"running": self._running[0].id if self._running else None,
                    "running_jobs": [job.id for job in self._running],
                    "waiting": [job.id for job, _ in self._pending], "limit": self.limit}

    def close(self) -> None:
        """Take no more jobs and let the worker end after the current one; waiting jobs are cancelled.

        Their ``cancelled`` event carries ``shutdown: True``: a job kept in the job store is
        then left queued there and runs again after the restart.
        """
        with self._lock:
            self._closed = True
            pending = list(self._pending)
            self._pending.clear()
            self._wakeup.notify_all()
        for job, _ in pending:
            job.emit("cancelled", message="The server stopped before the job started", shutdown=True)
        if self._on_close is not None:
            self._on_close()

    # --- the worker --------------------------------------------------------------------

    def _forget_old_jobs(self) -> None:
        """Keep the ``HISTORY`` most recent ended jobs reachable by id (their images are on disk)."""
        ended = [job_id for job_id, job in self._jobs.items() if job.done]
        for job_id in ended[: max(0, len(ended) - HISTORY)]:
            del self._jobs[job_id]

    def _ensure_workers(self) -> None:
        """Start worker threads (the caller holds the lock): one per job that could run now, at least one."""
        wanted = max(1, min(self.slots, len(self._pending) + len(self._running)))
        while len(self._workers) < wanted:
            worker = threading.Thread(target=self._work, name=f"{self._name}-{len(self._workers)}", daemon=True)
            worker._easel_queue = self  # lets generate() know its own worker after the thread ends
            self._workers.add(worker)
            worker.start()

    def _announce_positions(self) -> None:
        with self._lock:
            ahead = 1 if self._running else 0
            places = [(job, ahead + index + 1) for index, (job, _) in enumerate(self._pending)]
        for job, position in places:
            job.set_position(position)

    def _wait_for_the_device(self) -> None:
        """While something outside the queue holds the device, start nothing and tell the waiting jobs why."""
        told: str | None = None
        while True:
            try:
                reason = self._device_in_use()
            except Exception:  # noqa: BLE001 - a broken hook must not stop the queue
                log.exception("device_in_use failed")
                reason = None
            if not reason:
                if told:
                    for job in self._waiting_jobs():
                        job.message = ""
                return
            if reason != told:
                for job in self._waiting_jobs():
                    job.message = f"waiting: {reason}"
                    job.emit("waiting", message=reason)
                told = reason
            with self._lock:
                if self._closed:
                    return
                self._wakeup.wait(DEVICE_POLL_SECONDS)

    def _waiting_jobs(self) -> list[Job]:
        with self._lock:
            return [job for job, _ in self._pending]

    def _take_next(self) -> "tuple[Job, GenerationRequest] | None | object":
        """The next job once a worker slot is free (the caller holds the lock); None: this thread ends;
        ``NO_FREE_WORKER``: jobs wait but no worker was free for a while (the caller looks at the device
        again: a backend whose every worker is held says why, and the waiting jobs show it).

        A thread ends when it has been idle for ``IDLE_SECONDS`` (the next submit starts a new
        one, so an app that is no longer used does not keep its models alive through it), when
        the queue is closed, or when there are more threads than slots (a worker went away).
        """
        idle = False
        while True:
            slots = self.slots
            if self._pending and len(self._running) < slots:
                job, request = self._pending.popleft()
                self._running.append(job)
                self._ensure_workers_if_needed()  # more free slots than threads (workers came up): one more
                return job, request
            if self._closed or len(self._workers) > max(slots, 1):
                return None
            if not self._pending:
                if idle:
                    return None
                idle = True
                self._wakeup.wait(IDLE_SECONDS)
            else:  # every worker is busy (or none is free): look again (at the device too) when a job ends, or soon
                self._wakeup.wait(DEVICE_POLL_SECONDS)
                return NO_FREE_WORKER

    def _work(self) -> None:
        try:
            while True:
                with self._lock:
                    has_work = bool(self._pending)
                if has_work:
                    self._wait_for_the_device()
                with self._lock:
                    taken = self._take_next()
                    if taken is None:
                        return
                if taken is NO_FREE_WORKER:
                    continue
                job, request = taken
                job.set_position(1)  # taken before its submitter announced its place: it still begins with "queued"
                job.leave_queue()
                self._announce_positions()
                try:
                    self._run_one(job, request)
                finally:
                    with self._lock:
                        self._running.remove(job)
                        self._ensure_workers_if_needed()
                        self._wakeup.notify_all()
                    self._announce_positions()
        finally:
            with self._lock:
                self._workers.discard(threading.current_thread())

    def _put_back(self, job: Job, request: GenerationRequest, requeue: "RequeueJob") -> None:
        """The backend gave ``job`` back (its worker died or declined it): first in line again."""
        job.message = str(requeue)
        log.warning("Job %s goes back to the queue: %s", job.id, requeue)
        if requeue.attempt is not None:
            job.emit("retried", attempt=requeue.attempt, message=str(requeue))
        with self._lock:
            closed = self._closed
            if not closed:
                job.enter_queue()
                self._pending.appendleft((job, request))  # its place is announced when this worker lets go
                self._wakeup.notify_all()
        if closed:
            job.emit("cancelled", message="The server stopped before the job could run again", shutdown=True)

    def _ensure_workers_if_needed(self) -> None:
        """After a job: more threads when more slots came up while jobs wait (the caller holds the lock)."""
        if self._pending and not self._closed:
            self._ensure_workers()

    def _run_one(self, job: Job, request: GenerationRequest) -> None:
        if job.interrupted:  # interrupted while it waited: it never starts
            job.emit("cancelled", message="Cancelled before it started")
            return
        job.emit("started", task=request.task, model=request.model)
        try:
            result = self._run(request, job)
        except RequeueJob as requeue:
            self._put_back(job, request, requeue)
            return
        except BaseException as exc:  # noqa: BLE001 - reported to the waiting caller, the worker goes on
            job.error = exc
            if not isinstance(exc, (EaselError, ValueError)):
                log.exception("Job %s failed", job.id)
            job.emit("failed", message=str(exc) or type(exc).__name__)
            return
        job.result = result
        if result.interrupted:
            job.emit("interrupted", images=len(result.images), seconds=result.seconds)
        else:
            job.emit("finished", images=len(result.images), seconds=result.seconds)


def follow_job(context: "ExtensionContext | EaselContext", request: GenerationRequest, job: Job,
               poll_seconds: float = 0.25) -> Iterator[Job]:
    """Queue ``request`` as ``job`` and yield the job whenever something happened (or every
    ``poll_seconds``) until it ends; the generator's return value is the result.

    For a UI tab that shows progress while it waits: ``result = yield from``-style use, or
    drive it with ``next`` and read ``StopIteration.value``. Raises :class:`QueueFullError`
    at once when the queue is full, and what the job raised when it failed.
    """
    context.submit(request, job)  # the app context or an extension's facade: both submit and wait_for
    seen = 0
    while not job.done:
        seen += len(job.wait_events(seen, timeout=poll_seconds))
        yield job
    return context.wait_for(job)


def create_queue(context: "EaselContext", backend: "Backend | None" = None) -> JobQueue:
    """The queue of the context's device, running jobs through ``backend`` (default: in process,
    the one generation path on the queue's thread; see :mod:`webui.backends`)."""
    if backend is None:
        from webui.backends.local import InProcessBackend

        backend = InProcessBackend(context)

    def limit() -> int:
        try:
            return int(context.settings.get(LIMIT_SETTING, DEFAULT_LIMIT))
        except (TypeError, ValueError):
            return DEFAULT_LIMIT

    return JobQueue(backend.run, limit=limit, name=f"easel-queue-{context.pipelines.device}",
                    device_in_use=backend.device_in_use, slots=backend.capacity, on_close=backend.close)
