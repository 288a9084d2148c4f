"""Job records that outlive the process: SQLite under the data folder, webhooks, re-queue on restart.

Jobs submitted through Easel's own REST routes (``/easel/v1/jobs``) are *persisted*: each has
a row in ``<data_dir>/jobs.sqlite3`` (the standard library's :mod:`sqlite3`, WAL journal, no
server) written when the job is submitted, when it starts and when it ends. A row holds the
task, the request (:meth:`GenerationRequest.to_dict` JSON, images as base64 PNG), the status,
the times, the error message, the saved images (paths relative to the outputs folder), their
infotexts and seeds, the job's events without the step events, and an optional webhook URL.

Jobs from the UI tabs are not persisted (nothing is written for them, the file is not even
created): the UI shows its own results, and a tab's job has nobody to come back for it after
a restart.

After a restart (a new context over the same data folder, see :func:`webui.app.create_context`)
:meth:`JobRecorder.recover` submits every job that was still queued, or running when the process
died, again, in the original order and with its original id; finished jobs stay listed with
their images (which are files under ``outputs/``). When a persisted job ends and it has a
webhook, its final record is POSTed there as JSON from a separate thread (with a timeout;
failures are logged and never touch the job).

The recorder follows jobs through :meth:`webui.jobs.Job.add_listener`; the queue knows nothing
of it, except that :meth:`webui.queue.JobQueue.close` marks the jobs it drops with
``shutdown: True`` so that they stay queued here.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from webui.errors import EaselError
from webui.jobs import FINAL_EVENTS, GenerationRequest, GenerationResult, Job, RequestError
from webui.queue import JobCancelledError, QueueFullError

if TYPE_CHECKING:
    from webui.context import EaselContext
    from webui.extension_context import ExtensionContext

log = logging.getLogger(__name__)

STORE_FILE = "jobs.sqlite3"
API_PREFIX = "/easel/v1"
"""Where Easel's own REST routes live; image URLs in records and webhooks start with it."""
GENERATION_TASKS = ("txt2img", "img2img", "inpaint")
ACTIVE_STATUSES = ("queued", "running")
WEBHOOK_TIMEOUT_SECONDS = 10.0
WEBHOOK_SCHEMES = ("http", "https")
DEFAULT_LIST_LIMIT = 50
MAX_LIST_LIMIT = 1000

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    task TEXT NOT NULL,
    request TEXT NOT NULL,
    status TEXT NOT NULL,
    created REAL NOT NULL,
    started REAL,
    ended REAL,
    error TEXT NOT NULL DEFAULT '',
    images TEXT NOT NULL DEFAULT '[]',
    infotexts TEXT NOT NULL DEFAULT '[]',
    seeds TEXT NOT NULL DEFAULT '[]',
    events TEXT NOT NULL DEFAULT '[]',
    webhook TEXT
)
"""
_JSON_COLUMNS = ("request", "images", "infotexts", "seeds", "events")
_COLUMNS = ("id", "task", "request", "status", "created", "started", "ended", "error", "images", "infotexts",
            "seeds", "events", "webhook")


@dataclass
class JobRecord:
    """One persisted job, as the store keeps it. Times are seconds since the epoch."""

    id: str
    task: str
    request: dict[str, Any]
    status: str = "queued"
    created: float = field(default_factory=time.time)
    started: float | None = None
    ended: float | None = None
    error: str = ""
    images: list[str] = field(default_factory=list)
    """Saved images, as paths relative to the outputs folder (``txt2img/2026-11-30/00001-42.png``)."""
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    """The job's events up to its end, step events left out (written when it ends)."""
    webhook: str | None = None

    @property
    def done(self) -> bool:
        return self.status in FINAL_EVENTS

    def summary(self) -> dict[str, Any]:
        """The record as plain JSON data without the request (which may hold large images);
        with ``image_urls``, the REST routes that serve the images. Webhooks receive this."""
        data = asdict(self)
        data.pop("request")
        data["image_urls"] = [image_url(self.id, index) for index in range(len(self.images))]
        return data


@dataclass
class JobTask:
    """A kind of job an extension adds to the job API (hook ``register_job_tasks``, API 1.4).

    ``check(request)`` validates a job's ``request`` (a JSON object) and returns what to keep
    in the job's record (and to run it with, also after a restart); it raises
    :class:`webui.api.RequestError` with a message for the user. ``run(context, request, job)``
    does the work on a thread of its own and returns a :class:`GenerationResult` whose images
    are saved (``path`` set, under the outputs folder). Image generation inside it goes through
    the queue with the same ``job`` (``context.generate(request, job)``): the job then shows its
    place in the queue and its steps, and cancelling it cancels or interrupts that generation.
    Raise :class:`webui.api.RequestError` (or another ``EaselError``) to fail with a message.
    """

    name: str
    check: Callable[[dict[str, Any]], dict[str, Any]]
    run: Callable[["ExtensionContext", dict[str, Any], Job], GenerationResult]


def image_url(job_id: str, index: int) -> str:
    """The REST route that serves image ``index`` of job ``job_id``."""
    return f"{API_PREFIX}/jobs/{job_id}/images/{index}"


def public_events(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Job events as API callers see them: without the server's file paths (images have URLs)."""
    return [{key: value for key, value in event.items() if key != "path"} for event in events]


def check_webhook_url(url: str | None) -> str | None:
    """``url`` when it is an absolute http(s) URL with a host (None stays None); raises :class:`RequestError`."""
    if url is None or url == "":
        return None
    parsed = urllib.parse.urlsplit(str(url))
    if parsed.scheme.lower() not in WEBHOOK_SCHEMES or not parsed.hostname:
        raise RequestError(f"the webhook must be an http:// or https:// URL with a host, got {url!r}")
    return str(url)


class JobStore:
    """The SQLite table of job records (one connection shared by all threads, behind a lock)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._connection = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        self._connection.row_factory = sqlite3.Row
        with self._lock:
            self._connection.execute("PRAGMA journal_mode=WAL")
            self._connection.execute("PRAGMA synchronous=NORMAL")
            self._connection.execute(_SCHEMA)

    def add(self, record: JobRecord) -> None:
        """Insert a new record (its id must be new)."""
        values = self._to_row(asdict(record))
        with self._lock:
            self._connection.execute(
                f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})",
                [values[name] for name in _COLUMNS])

    def update(self, job_id: str, **changes: Any) -> None:
        """Change some fields of a record (unknown names raise ``KeyError``)."""
        unknown = set(changes) - set(_COLUMNS) or {"id"} & set(changes)
        if unknown:
            raise KeyError(f"cannot update {sorted(unknown)}")
        values = self._to_row(changes)
        with self._lock:
            self._connection.execute(f"UPDATE jobs SET {', '.join(f'{name} = ?' for name in values)} WHERE id = ?",
                                     [*values.values(), job_id])

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._connection.execute("DELETE FROM jobs WHERE id = ?", (job_id,))

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            row = self._connection.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return self._from_row(row) if row is not None else None

    def list(self, limit: int = DEFAULT_LIST_LIMIT, offset: int = 0) -> list[JobRecord]:
        """Records, newest first."""
        with self._lock:
            rows = self._connection.execute("SELECT * FROM jobs ORDER BY seq DESC LIMIT ? OFFSET ?",
                                            (int(limit), int(offset))).fetchall()
        return [self._from_row(row) for row in rows]

    def active(self) -> list[JobRecord]:
        """Records still queued or running, oldest first (the order they were submitted in)."""
        with self._lock:
            rows = self._connection.execute(
                f"SELECT * FROM jobs WHERE status IN ({', '.join('?' for _ in ACTIVE_STATUSES)}) ORDER BY seq",
                ACTIVE_STATUSES).fetchall()
        return [self._from_row(row) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    @staticmethod
    def _to_row(values: dict[str, Any]) -> dict[str, Any]:
        return {name: json.dumps(value) if name in _JSON_COLUMNS else value for name, value in values.items()}

    @staticmethod
    def _from_row(row: sqlite3.Row) -> JobRecord:
        values = {name: row[name] for name in _COLUMNS}
        for name in _JSON_COLUMNS:
            values[name] = json.loads(values[name])
        return JobRecord(**values)


class JobRecorder:
    """Persisted jobs of one app: submit, record as they run, re-queue after a restart, webhooks.

    The store file is opened on the first persisted job (or at start-up when it exists), so an
    app whose REST routes are never used writes nothing.
    """

    def __init__(self, context: "EaselContext", path: Path | None = None,
                 webhook_timeout: float = WEBHOOK_TIMEOUT_SECONDS) -> None:
        self.context = context
        self.path = Path(path) if path is not None else Path(context.data_dir) / STORE_FILE
        self.webhook_timeout = webhook_timeout
        self._store: JobStore | None = None
        self._store_lock = threading.Lock()
        self._submit_lock = threading.Lock()
        self._webhook_threads: list[threading.Thread] = []
        self._closed = False
        self._tasks: dict[str, JobTask] | None = None
        self._task_jobs: dict[str, Job] = {}
        """Running jobs of extension tasks, by id (the queue knows them only while they generate)."""
        self._task_threads: dict[str, threading.Thread] = {}
        self._started: set[str] = set()

    @property
    def store(self) -> JobStore:
        with self._store_lock:
            if self._closed:
                raise RuntimeError("the job store of this app is closed")
            if self._store is None:
                self._store = JobStore(self.path)
            return self._store

    # --- tasks -------------------------------------------------------------------------

    def extension_tasks(self) -> dict[str, JobTask]:
        """The job tasks extensions add (``register_job_tasks``), by name; asked once."""
        if self._tasks is None:
            tasks: dict[str, JobTask] = {}

            def register(task: JobTask) -> None:
                if not isinstance(task, JobTask):
                    raise TypeError(f"register_job_tasks expects webui.api.JobTask, got {type(task).__name__}")
                if task.name in GENERATION_TASKS or task.name in tasks:
                    raise ValueError(f"a job task named {task.name!r} exists already")
                tasks[task.name] = task

            self.context.plugins.call("register_job_tasks", register=register)
            self._tasks = tasks
        return self._tasks

    def task_names(self) -> list[str]:
        """Every task a persisted job may have: txt2img, img2img, inpaint, then the extensions' ones."""
        return [*GENERATION_TASKS, *self.extension_tasks()]

    # --- submitting --------------------------------------------------------------------

    def generation_request(self, task: str, payload: dict[str, Any]) -> GenerationRequest:
        """The :class:`GenerationRequest` of a txt2img/img2img/inpaint job, validated.

        The model defaults to the app's; images are always saved (the outputs folder is
        where a persisted job's images live). Raises :class:`RequestError` for bad values.
        """
        if task not in GENERATION_TASKS:
            raise RequestError(f"unknown task {task!r}; one of {', '.join(GENERATION_TASKS)}")
        try:
            request = GenerationRequest.from_dict({**payload, "task": task, "save": True})
        except (TypeError, ValueError) as exc:  # a bad refiner dict, broken base64
            raise RequestError(f"the request could not be read: {exc}") from None
        request.model = request.model or self.context.default_model
        request.validate(self.context.max_side)
        return request

    def submit(self, task: str, payload: dict[str, Any], webhook: str | None = None) -> Job:
        """Validate, record and queue a job; returns its :class:`Job` at once.

        Raises :class:`RequestError` for a bad request or webhook, :class:`QueueFullError`
        when the queue is full (then nothing is recorded).
        """
        webhook = check_webhook_url(webhook)
        job = Job()
        extension_task = self.extension_tasks().get(task)
        if extension_task is not None:
            checked = extension_task.check(dict(payload))
            with self._submit_lock:
                self.store.add(JobRecord(id=job.id, task=task, request=checked, webhook=webhook))
                self._start_extension_job(extension_task, checked, job)
            return job
        if task not in GENERATION_TASKS:
            raise RequestError(f"unknown task {task!r}; one of {', '.join(self.task_names())}")
        request = self.generation_request(task, payload)
        record = JobRecord(id=job.id, task=task, request=request.to_dict(), webhook=webhook)
        with self._submit_lock:  # the store's order is the queue's order
            self.store.add(record)
            job.add_listener(self._on_event)
            try:
                self.context.job_queue().submit(request, job)
            except QueueFullError:
                self.store.delete(job.id)
                raise
        return job

    def cancel(self, job: Job) -> str:
        """Cancel a waiting job (``"cancelled"``) or interrupt a running one (``"interrupted"``).

        A job of an extension task that is not generating yet is interrupted: its task stops
        before it would generate.
        """
        return self.context.job_queue().cancel(job)

    def _start_extension_job(self, task: JobTask, request: dict[str, Any], job: Job) -> None:
        self._task_jobs[job.id] = job
        job.add_listener(self._on_event)
        thread = threading.Thread(target=self._run_extension_job, args=(task, request, job),
                                  name=f"easel-{task.name}-{job.id[:8]}", daemon=True)
        self._task_threads[job.id] = thread
        thread.start()

    def _run_extension_job(self, task: JobTask, request: dict[str, Any], job: Job) -> None:
        """Run a job of an extension task on this thread and record how it ended."""
        job.emit("started", task=task.name)
        error = ""
        try:
            job.result = task.run(self.context.for_extensions, request, job)
            status = "interrupted" if job.result.interrupted else "finished"
        except JobCancelledError:
            if any(event.get("shutdown") for event in job.events()[-1:]):
                self._task_jobs.pop(job.id, None)
                self._task_threads.pop(job.id, None)
                return  # the server stops: the job stays in the store and runs again after the restart
            job.result, status, error = None, "cancelled", "Cancelled before it started"
        except Exception as exc:  # noqa: BLE001 - reported in the job's record, the server goes on
            job.result = None
            status = "interrupted" if job.interrupted else "failed"
            if isinstance(exc, (EaselError, ValueError)):
                error = str(exc)
            else:
                log.exception("Job %s (%s) failed", job.id, task.name)
                error = f"{type(exc).__name__}: {exc}"
        try:
            self._record_end(job, {"kind": status, "time": time.time(), "message": error})
        finally:
            self._task_jobs.pop(job.id, None)
            self._task_threads.pop(job.id, None)

    def recover(self) -> list[Job]:
        """Queue again, in their original order, the jobs the store says were queued or running.

        Called when the app starts; does nothing (and creates no file) when there is no store
        yet. A job whose request no longer validates is marked failed with the reason.
        """
        if self._store is None and not self.path.exists():
            return []
        jobs = []
        with self._submit_lock:
            for record in self.store.active():
                job = Job(record.id)
                extension_task = self.extension_tasks().get(record.task)
                if extension_task is not None:
                    self.store.update(record.id, status="queued", started=None, ended=None, error="", images=[],
                                      infotexts=[], seeds=[], events=[])
                    self._start_extension_job(extension_task, record.request, job)
                    jobs.append(job)
                    continue
                try:
                    request = self.generation_request(record.task, record.request)
                except RequestError as exc:
                    self.store.update(record.id, status="failed", ended=time.time(),
                                      error=f"Could not be queued again after a restart: {exc}")
                    continue
                self.store.update(record.id, status="queued", started=None, ended=None, error="", images=[],
                                  infotexts=[], seeds=[], events=[])
                job.add_listener(self._on_event)
                self.context.job_queue().submit(request, job, over_limit=True)  # accepted before: never refused
                jobs.append(job)
        if jobs:
            log.info("Queued %d job(s) again that had not finished before the restart", len(jobs))
        return jobs

    # --- reading -----------------------------------------------------------------------

    def get(self, job_id: str) -> JobRecord | None:
        """The record of a persisted job (None for unknown ids and for jobs that were not persisted)."""
        if self._store is None and not self.path.exists():
            return None
        return self.store.get(job_id)

    def list(self, limit: int = DEFAULT_LIST_LIMIT, offset: int = 0) -> list[JobRecord]:
        if self._store is None and not self.path.exists():
            return []
        return self.store.list(max(1, min(int(limit), MAX_LIST_LIMIT)), max(0, int(offset)))

    def live_job(self, job_id: str) -> Job | None:
        """The job object while this process knows it (events, position, cancel)."""
        return self._task_jobs.get(job_id) or self.context.job_queue().get(job_id)

    def close(self, wait_seconds: float = 5.0) -> None:
        """Close the store (jobs still queued stay recorded as queued).

        Close the queue first: jobs of extension tasks then end (their generation is dropped)
        and are given up to ``wait_seconds`` to finish writing their records.
        """
        for thread in list(self._task_threads.values()):
            thread.join(wait_seconds)
        with self._store_lock:
            self._closed = True
            if self._store is not None:
                self._store.close()
                self._store = None

    def wait_for_webhooks(self, timeout: float | None = None) -> None:
        """Wait until the webhook calls made so far have ended (for tests and a clean shutdown)."""
        for thread in list(self._webhook_threads):
            thread.join(timeout)

    # --- following the jobs ------------------------------------------------------------

    def _on_event(self, job: Job, event: dict[str, Any]) -> None:
        kind = event["kind"]
        if kind == "started" and job.id not in self._started:  # a job of an extension task may start twice:
            self._started.add(job.id)                           # itself, then its generation in the queue
            self.store.update(job.id, status="running", started=event["time"])
        elif kind in FINAL_EVENTS:
            if kind == "cancelled" and event.get("shutdown"):
                return  # the server stops: the job stays queued and runs after the restart
            if job.id in self._task_jobs:
                return  # its generation ended; the task records the job's end when it has finished its work
            self._record_end(job, event)

    def _record_end(self, job: Job, event: dict[str, Any]) -> None:
        images, infotexts, seeds = [], [], []
        if job.result is not None:
            for image in job.result.images:
                if image.path:
                    images.append(self._relative_to_outputs(image.path))
                infotexts.append(image.infotext)
                seeds.append(image.seed)
        error = str(event.get("message", "")) if event["kind"] in ("failed", "cancelled") else ""
        events = public_events([item for item in job.events() if item["kind"] != "step"])
        self.store.update(job.id, status=event["kind"], ended=event["time"], error=error, images=images,
                          infotexts=infotexts, seeds=seeds, events=events)
        self._started.discard(job.id)
        record = self.store.get(job.id)
        if record is not None and record.webhook:
            thread = threading.Thread(target=self._call_webhook, args=(record.webhook, record.summary()),
                                      name=f"easel-webhook-{job.id[:8]}", daemon=True)
            self._webhook_threads = [t for t in self._webhook_threads if t.is_alive()] + [thread]
            thread.start()

    def _relative_to_outputs(self, path: str) -> str:
        """``path`` relative to the outputs folder (POSIX separators); absolute when it lies elsewhere."""
        resolved = Path(path).resolve()
        try:
            return resolved.relative_to(Path(self.context.outputs_dir).resolve()).as_posix()
        except ValueError:
            return str(resolved)

    def _call_webhook(self, url: str, payload: dict[str, Any]) -> None:
        """POST ``payload`` as JSON to ``url``; any failure is logged, never raised."""
        body = json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(url, data=body, method="POST",
                                         headers={"Content-Type": "application/json",
                                                  "User-Agent": "Easel job webhook"})
        opener = urllib.request.build_opener(_NoRedirect)  # a redirect could point anywhere: not followed
        try:
            with opener.open(request, timeout=self.webhook_timeout) as response:
                response.read(1024)
        except Exception as exc:  # noqa: BLE001 - a webhook that fails must not affect anything else
            log.warning("The webhook of job %s (%s) failed: %s", payload.get("id"), url, exc)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Webhooks do not follow redirects (a 3xx answer is logged as a failure)."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None
