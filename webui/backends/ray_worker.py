"""The Ray Serve side of the ``ray`` backend: the Easel worker deployment and the job-signal actor.

Imported in the front (to deploy) and in every replica (to run); needs ``ray[serve]``
(``requirements-ray.txt``). Each replica of :class:`EaselWorker` builds its own
:class:`webui.context.EaselContext` with the front's options, extensions and settings, so
memory options, LoRAs and hooks apply exactly as in the front's own process; it saves
nothing (the front saves the images in its outputs folder).

A job is one streaming call of :meth:`EaselWorker.run`; the replica streams plain-data
events back (see :func:`wire_event`):

* ``hello``: the replica's id, process id, node, Easel version and extension versions
  (the front refuses a replica whose versions differ from its own);
* ``image_started``: ``image``/``images``/``steps`` when an image (a batch) starts;
* ``step``: ``step``/``steps``/``image``/``images`` and, every few steps, ``preview`` (PNG bytes);
* ``result``: every image as PNG bytes with its seed and infotext, ``interrupted``,
  ``skipped``, ``seconds``; or ``error``: ``type`` and ``message`` of what the job raised.

Interrupt and Skip are cooperative: the front sends them to the :class:`JobSignals` actor;
the replica waits on it while the job runs and sets the job's flag, which Easel's step
callback reads at the next step. The replica and its loaded pipeline survive an interrupt
(Serve's own request cancellation cannot stop synchronous diffusers code).
"""

from __future__ import annotations

import asyncio
import io
import os
import tempfile
from importlib import import_module
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from ray import serve

from webui import __version__

SIGNALS_ACTOR = "easel-job-signals"
NAMESPACE = "easel"
DEPLOYMENT = "EaselWorker"
#: Models one replica keeps loaded for the multiplexed routing (Serve evicts the least recently used).
MODELS_PER_REPLICA = 2


@ray.remote(num_cpus=0)
class JobSignals:
    """Interrupt / Skip presses of running remote jobs, by job id (one actor per cluster and namespace).

    The front calls :meth:`send`; the replica running the job waits in :meth:`next`, which
    returns each press once, as soon as it is sent (no polling).
    """

    def __init__(self) -> None:
        self._presses: dict[str, asyncio.Queue] = {}

    def _queue(self, job_id: str) -> asyncio.Queue:
        return self._presses.setdefault(job_id, asyncio.Queue())

    async def send(self, job_id: str, signal: str) -> None:
        self._queue(job_id).put_nowait(signal)

    async def next(self, job_id: str) -> str:
        return await self._queue(job_id).get()

    async def forget(self, job_id: str) -> None:
        self._presses.pop(job_id, None)


def job_signals() -> "ray.actor.ActorHandle":
    """The cluster's :class:`JobSignals` actor, made on first use."""
    return JobSignals.options(name=SIGNALS_ACTOR, namespace=NAMESPACE, get_if_exists=True,
                              lifetime="detached").remote()


def png_bytes(image: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def versions_of(context: Any) -> dict[str, Any]:
    """``{"easel": version, "extensions": {name: version}}`` of the loaded extensions, for the version check."""
    return {"easel": __version__,
            "extensions": {info.name: info.version for info in context.extensions() if info.status == "loaded"}}


def wire_event(job: Any, event: dict[str, Any]) -> dict[str, Any] | None:
    """A job event as the replica streams it (plain data), or None for events the front makes itself."""
    if event["kind"] != "step":
        return None  # started / image / finished ...: the front emits its own, after saving the images
    data = {key: event[key] for key in ("step", "steps", "image", "images")}
    if event.get("preview") and job.preview is not None:
        data["preview"] = png_bytes(job.preview)
    return {"kind": "step", **data}


def streamed_job(job_id: str, on_start_image: Any) -> Any:
    """A :class:`webui.jobs.Job` that also calls ``on_start_image(index, images, steps)`` when an image starts
    (the front's progress shows the step count before the first step, as a local job's does)."""
    from webui.jobs import Job

    class _Job(Job):
        def start_image(self, index: int, total_images: int, total_steps: int) -> None:
            super().start_image(index, total_images, total_steps)
            on_start_image(index, total_images, total_steps)

    return _Job(job_id)


def build_worker_context(config: dict[str, Any]) -> Any:
    """The replica's own app context, from the front's :func:`webui.backends.ray_serve.worker_config`."""
    from webui.app import AppOptions, create_context

    options = dict(config["options"])
    plugins = {name: import_module(module) for name, module in config.get("plugin_modules", {}).items()}
    data_dir = Path(tempfile.mkdtemp(prefix="easel-worker-"))
    if config.get("settings_json"):
        (data_dir / "config.json").write_text(config["settings_json"], encoding="utf-8")
    for key in ("models_dir", "extensions_dir"):
        options[key] = Path(options[key])
    options["extra_extension_dirs"] = [Path(folder) for folder in options["extra_extension_dirs"]]
    options["disabled_extensions"] = set(options["disabled_extensions"])
    return create_context(AppOptions(**options, data_dir=data_dir, outputs_dir=data_dir / "outputs",
                                     extra_plugins=plugins))


@serve.deployment(name=DEPLOYMENT, max_ongoing_requests=1, health_check_period_s=2, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=5)
class EaselWorker:
    """One Easel worker: its own pipeline manager and extensions, one job at a time."""

    def __init__(self, config: dict[str, Any]) -> None:
        threads = config.get("torch_threads")
        if threads:
            import torch

            torch.set_num_threads(int(threads))  # the same CPU maths as the front's own process
        self.context = build_worker_context(config)
        self.versions = versions_of(self.context)
        self.identity = {"replica": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid(),
                         "node": ray.get_runtime_context().get_node_id()}
        self.signals = job_signals()

    def describe(self) -> dict[str, Any]:
        """Who this replica is and which Easel and extension versions it runs."""
        return {**self.identity, **self.versions}

    @serve.multiplexed(max_num_models_per_replica=MODELS_PER_REPLICA)
    async def get_model(self, model_id: str) -> str:
        """Load checkpoint ``model_id`` (Serve routes a job to a replica that already holds its model)."""
        await asyncio.to_thread(self._load, model_id)
        return model_id

    def _load(self, name: str) -> None:
        with self.context.pipelines.use(name):
            pass

    async def run(self, request_data: dict[str, Any], job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Run one job and stream its events (see the module's docstring)."""
        from webui.generation import run_generation
        from webui.jobs import GenerationRequest, Job  # noqa: F401 - Job: the listener's type

        yield {"kind": "hello", **self.describe()}
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        done = object()

        def image_started(index: int, images: int, steps: int) -> None:
            loop.call_soon_threadsafe(events.put_nowait, {"kind": "image_started", "image": index,
                                                          "images": images, "steps": steps})

        job = streamed_job(job_id, image_started)
        watcher = asyncio.create_task(self._follow_signals(job))
        try:
            try:
                request = GenerationRequest.from_dict(request_data)
                request.save = False  # the front saves, in its own outputs folder
                await self.get_model(serve.get_multiplexed_model_id() or request.model)
            except Exception as exc:  # noqa: BLE001 - reported to the front as the job's error
                yield {"kind": "error", "type": type(exc).__name__, "message": str(exc)}
                return

            def forward(job_: Job, event: dict[str, Any]) -> None:
                wired = wire_event(job_, event)
                if wired is not None:
                    loop.call_soon_threadsafe(events.put_nowait, wired)

            def generate() -> Any:
                try:
                    return run_generation(self.context, request, job)
                finally:
                    loop.call_soon_threadsafe(events.put_nowait, done)

            job.add_listener(forward)
            running = loop.run_in_executor(None, generate)
            while (event := await events.get()) is not done:
                yield event
            try:
                result = await running
            except Exception as exc:  # noqa: BLE001 - reported to the front as the job's error
                yield {"kind": "error", "type": type(exc).__name__, "message": str(exc)}
                return
            yield {"kind": "result", "interrupted": result.interrupted, "skipped": result.skipped,
                   "seconds": result.seconds,
                   "images": [{"png": png_bytes(record.image), "seed": record.seed, "infotext": record.infotext}
                              for record in result.images]}
        finally:
            job.interrupt()  # the front went away (stream cancelled): stop at the next step
            watcher.cancel()
            self.signals.forget.remote(job_id)

    async def _follow_signals(self, job: Any) -> None:
        """Set the job's Interrupt / Skip flag as soon as the front sends one."""
        while True:
            signal = await self.signals.next.remote(job.id)
            if signal == "interrupt":
                job.interrupt()
            elif signal == "skip":
                job.skip()

