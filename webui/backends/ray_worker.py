"""The Ray Serve side of the ``ray`` backend: the Easel worker deployment and the job-signal actor.

Imported in the front (to deploy) and in every replica (to run); needs ``ray[serve]``
(``requirements-ray.txt``). Each replica of :class:`EaselWorker` builds its own
:class:`webui.context.EaselContext` with the front's options, extensions and settings, so
memory options, LoRAs and hooks apply exactly as in the front's own process; it saves
nothing (the front saves the images in its outputs folder).

A job is one streaming call of :meth:`EaselWorker.run`; the replica streams plain-data
events back (see :func:`wire_event`):

* ``declined``: ``reason``, alone, when the replica's GPU is held by a training run (see
  :class:`DeviceHolds`): the front puts the job back in its queue for another replica;
* ``hello``: the replica's id, process id, node, devices, Easel version and extension
  versions (the front refuses a replica whose versions differ from its own);
* ``image_started``: ``image``/``images``/``steps`` when an image (a batch) starts;
* ``step``: ``step``/``steps``/``image``/``images`` and, every few steps, ``preview`` (PNG bytes);
* ``image``: ``index``, ``png``, ``seed`` and ``infotext`` of each image as soon as it is finished;
* ``result``: ``interrupted``, ``skipped``, ``seconds``; or ``error``: ``type`` and ``message``
  of what the job raised.

Each job also carries the front's saved settings: a replica whose settings differ takes them
over (and reloads its models with them) before it runs the job, so a change in the front's
Settings tab reaches every worker with the next job.

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
import time
from importlib import import_module
from pathlib import Path
from typing import Any, AsyncIterator

import ray
from ray import serve

from webui import __version__

SIGNALS_ACTOR = "easel-job-signals"
HOLDS_ACTOR = "easel-device-holds"
NAMESPACE = "easel"
DEPLOYMENT = "EaselWorker"
#: Models one replica keeps loaded for the multiplexed routing (Serve evicts the least recently used).
MODELS_PER_REPLICA = 2
#: How often Serve asks each replica for its routing stats (whether its GPU is held); a replica not heard
#: from for ``REPLICA_SILENT_SECONDS`` no longer counts (it died or was scaled away).
ROUTING_STATS_PERIOD_SECONDS = 1.0
REPLICA_SILENT_SECONDS = 5.0


def device_key(node: str, gpu: Any = None) -> str:
    """One device of the cluster: a GPU of a node (``<node>:gpu<id>``, Ray's id) or a node's CPU."""
    return f"{node}:cpu" if gpu is None else f"{node}:gpu{gpu}"


def front_device_keys(device: Any, node: str, visible_devices: str | None) -> list[str]:
    """The cluster key of the front's own device (where its training runs): ``cuda:N`` is the N-th
    GPU of ``CUDA_VISIBLE_DEVICES`` (all of the node's GPUs when unset) on the front's node."""
    if getattr(device, "type", str(device)) != "cuda":
        return [device_key(node)]
    index = getattr(device, "index", None) or 0
    visible = [item.strip() for item in (visible_devices or "").split(",") if item.strip()]
    return [device_key(node, visible[index] if index < len(visible) else index)]


@ray.remote(num_cpus=0)
class DeviceHolds:
    """Which devices of the cluster something outside the queue holds, and which replicas sit on them.

    The front calls :meth:`hold` while a training run uses its device (its ``device_in_use``
    hooks answer) and ``hold([], None)`` when it ends. Each replica calls :meth:`reason_for`
    whenever Serve reads its routing stats (every ``ROUTING_STATS_PERIOD_SECONDS``) and when a
    job reaches it: a held replica is left out by the router (:mod:`webui.backends.ray_router`)
    and declines a job that reaches it anyway. :meth:`held_replicas` tells the front how many
    replicas are out, so its queue hands out that many jobs fewer. One front per cluster.
    """

    def __init__(self) -> None:
        self._holds: dict[str, str] = {}
        self._replicas: dict[str, tuple[float, list[str]]] = {}

    def hold(self, devices: list[str], reason: str | None) -> None:
        """From now on ``devices`` are held for ``reason`` (and no others); ``reason=None``: none is."""
        self._holds = {device: reason for device in devices} if reason else {}

    def reason_for(self, replica: str, devices: list[str]) -> str | None:
        """Why replica ``replica`` on ``devices`` must take no jobs now, or None (and note that it is up)."""
        self._replicas[replica] = (time.monotonic(), list(devices))
        return next((self._holds[device] for device in devices if device in self._holds), None)

    def held_replicas(self) -> int:
        """How many replicas heard from lately sit on a held device."""
        now = time.monotonic()
        self._replicas = {replica: (seen, devices) for replica, (seen, devices) in self._replicas.items()
                          if now - seen < REPLICA_SILENT_SECONDS}
        return sum(1 for _, devices in self._replicas.values() if any(device in self._holds for device in devices))


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


def device_holds() -> "ray.actor.ActorHandle":
    """The cluster's :class:`DeviceHolds` actor, made on first use."""
    return DeviceHolds.options(name=HOLDS_ACTOR, namespace=NAMESPACE, get_if_exists=True,
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
        return None  # started / image / finished ...: the front emits its own (images come through on_image)
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
        node = ray.get_runtime_context().get_node_id()
        self.devices = [device_key(node, gpu) for gpu in ray.get_gpu_ids()] or [device_key(node)]
        self.identity = {"replica": serve.get_replica_context().replica_id.unique_id, "pid": os.getpid(),
                         "node": node, "devices": self.devices}
        self.signals = job_signals()
        self.holds = device_holds()
        self.front_settings: dict[str, Any] | None = None

    async def record_routing_stats(self) -> dict[str, Any]:
        """What the router reads (every ``ROUTING_STATS_PERIOD_SECONDS``): ``held``, why this replica's
        GPU takes no jobs now ("" when it does)."""
        return {"held": await self.holds.reason_for.remote(self.identity["replica"], self.devices) or ""}

    def take_front_settings(self, values: dict[str, Any]) -> None:
        """Use the front's saved settings; when they changed, the models reload with them on next use."""
        if values == self.front_settings:
            return
        self.context.settings.update(values)
        if self.front_settings is not None:
            self.context.pipelines.reconfigure()
        self.front_settings = dict(values)

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

    async def run(self, request_data: dict[str, Any], job_id: str,
                  front_settings: dict[str, Any] | None = None) -> AsyncIterator[dict[str, Any]]:
        """Run one job and stream its events (see the module's docstring)."""
        from webui.generation import run_generation
        from webui.jobs import GenerationRequest, ImageRecord, Job  # noqa: F401 - the callbacks' types

        held = await self.holds.reason_for.remote(self.identity["replica"], self.devices)
        if held:
            yield {"kind": "declined", "reason": held}
            return
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
                if front_settings is not None:
                    await asyncio.to_thread(self.take_front_settings, front_settings)
                await self.get_model(serve.get_multiplexed_model_id() or request.model)
            except Exception as exc:  # noqa: BLE001 - reported to the front as the job's error
                yield {"kind": "error", "type": type(exc).__name__, "message": str(exc)}
                return

            def forward(job_: Job, event: dict[str, Any]) -> None:
                wired = wire_event(job_, event)
                if wired is not None:
                    loop.call_soon_threadsafe(events.put_nowait, wired)

            def finished_image(index: int, record: ImageRecord) -> None:
                loop.call_soon_threadsafe(events.put_nowait, {
                    "kind": "image", "index": index, "png": png_bytes(record.image), "seed": record.seed,
                    "infotext": record.infotext})

            def generate() -> Any:
                try:
                    return run_generation(self.context, request, job, on_image=finished_image)
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
                   "seconds": result.seconds, "images": len(result.images)}
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

