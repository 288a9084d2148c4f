"""The ``ray`` backend, front side: Easel's queue dispatches its jobs to Ray Serve workers.

``python launch.py --backend ray [--ray-address local|auto|HOST:PORT] [--workers N]``

* The front (this process) keeps the one UI and API, the one queue and the one outputs
  folder. The queue runs at most :meth:`RayServeBackend.capacity` jobs at once (the
  replicas that are up), so a job goes out only when a replica is free.
* The workers are the replicas of one Serve deployment (:class:`webui.backends.ray_worker.EaselWorker`):
  one per GPU (``num_gpus=1``) where the cluster has GPUs, else CPU replicas; each builds its
  own app context with the front's options, extensions and settings. ``serve.multiplexed``,
  keyed by checkpoint, sends a job to a replica that already holds its model.
* A job is one streaming request; its events become the same :class:`webui.jobs.Job`
  events as a local job's (``step`` with previews, ``image`` as each image is finished),
  plus ``dispatched`` (which replica runs it) and ``retried``. The front saves the images
  as they come. Each job carries the front's saved settings, so a change in the Settings
  tab reaches the replicas with the next job.
* A replica that dies mid-job (process killed, node lost): the job goes back to the head of
  Easel's queue (:class:`webui.backends.RequeueJob`) and runs again on a replica that is up
  (at most ``max_attempts`` times); its ``retried`` event and :attr:`Job.message` say so.
  The images it had finished are kept (and not saved twice).
* While a training run holds the front's GPU (the ``device_in_use`` hooks answer), the
  replica on that GPU takes no jobs (:class:`webui.backends.ray_worker.DeviceHolds`,
  :mod:`webui.backends.ray_router`); the queue hands out one job fewer at once, and jobs
  wait with the reason only when every replica's GPU is held.
* A replica whose Easel or extension versions differ from the front's is refused: the
  backend does not start (or the job fails) with the differences as the reason.
* Security: a cluster this process starts (``--ray-address local``) listens on 127.0.0.1
  only, with Ray's dashboard off and no Serve HTTP proxy (the front talks to the
  deployment through a handle). Joining a remote cluster needs Ray's token authentication
  (``RAY_AUTH_MODE=token``): see the README, "Several GPUs, several machines".
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from ray import serve
from ray.serve.config import RequestRouterConfig

from webui.backends import RequeueJob
from webui.backends.ray_router import EaselRequestRouter
from webui.backends.ray_worker import (DEPLOYMENT, NAMESPACE, ROUTING_STATS_PERIOD_SECONDS, EaselWorker,
                                       device_holds, front_device_keys, job_signals, versions_of)
from webui.errors import EaselError, GenerationError
from webui.jobs import FINAL_EVENTS, GenerationResult, ImageRecord, RequestError, png_to_image

if TYPE_CHECKING:
    from webui.app import AppOptions
    from webui.context import EaselContext
    from webui.jobs import GenerationRequest, Job

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: How often the number of running (and held) replicas is read, the front's device_in_use hooks asked, and
#: Interrupt / Skip presses forwarded.
CAPACITY_POLL_SECONDS = 1.0
PRESS_POLL_SECONDS = 0.02
RETRY_PAUSE_SECONDS = 1.0
#: Options of the app that the replicas take over (folders of models and extensions, device, precision, ...).
REPLICA_OPTION_FIELDS = ("models_dir", "extensions_dir", "extra_extension_dirs", "device", "precision", "model",
                         "max_side", "max_loaded", "allow_pickle", "entry_points", "disabled_extensions",
                         "setting_overrides")
ERROR_TYPES = {"RequestError": RequestError, "GenerationError": GenerationError}


class WorkerRefusedError(EaselError):
    """A worker runs another Easel or other extensions than the front; the message says which."""


class WorkerLostError(EaselError):
    """The replica running a job went away (process killed, node lost)."""


class WorkerDeclinedError(EaselError):
    """The replica a job reached declined it: its GPU is held (a training run); the message says why."""


def worker_config(context: "EaselContext", app_options: "AppOptions", torch_threads: int | None = None) -> dict:
    """What a replica needs to build the same app as the front: plain data only.

    Extensions given as objects (``AppOptions.extra_plugins``) travel as their module's name
    (the replica imports it); the saved settings travel as the front's ``config.json``.
    """
    import types

    options: dict[str, Any] = {}
    for name in REPLICA_OPTION_FIELDS:
        value = getattr(app_options, name)
        if isinstance(value, Path):
            value = str(value)
        elif isinstance(value, (list, set, tuple)):
            value = [str(item) if isinstance(item, Path) else item for item in value]
        options[name] = value
    plugin_modules = {}
    for name, plugin in app_options.extra_plugins.items():
        if not isinstance(plugin, types.ModuleType):
            raise EaselError(f"extension {name!r} is an object, not a module: the Ray workers cannot load it; "
                             "install it as a package or a drop-in folder")
        plugin_modules[name] = plugin.__name__
    settings_file = Path(context.data_dir) / "config.json"
    return {"options": options, "plugin_modules": plugin_modules, "torch_threads": torch_threads,
            "settings_json": settings_file.read_text(encoding="utf-8") if settings_file.exists() else ""}


def worker_environment() -> dict[str, str]:
    """Environment of the replicas: Easel importable from its folder (the same path on every node)."""
    path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]))
    env = {"PYTHONPATH": path}
    for name in ("HF_HUB_OFFLINE", "HF_HOME", "TOKENIZERS_PARALLELISM"):
        if os.environ.get(name):
            env[name] = os.environ[name]
    return env


def connect(address: str = "local", num_cpus: int | None = None) -> bool:
    """Join or start the Ray cluster; True when this call started it (and should stop it).

    ``local``: a private cluster on this machine, listening on 127.0.0.1 only, dashboard off.
    ``auto``: the cluster ``ray start --head`` made on this machine. ``HOST:PORT``: that cluster
    (token authentication: set ``RAY_AUTH_MODE=token`` and the cluster's token first).
    An already initialised Ray (tests, notebooks) is used as it is.
    """
    if ray.is_initialized():
        return False
    if address == "local":
        # 127.0.0.1 only: see webui.backends.bind_ray_to_localhost (create_backend calls it before importing ray)
        ray.init(num_cpus=num_cpus, include_dashboard=False, namespace=NAMESPACE, log_to_driver=False)
        return True
    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)
    return False


def version_differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """What differs between the front's versions and a worker's, one phrase per difference."""
    differences = []
    if expected["easel"] != found.get("easel"):
        differences.append(f"Easel {found.get('easel')} (the front runs {expected['easel']})")
    theirs = dict(found.get("extensions") or {})
    for name, version in sorted(expected["extensions"].items()):
        if name not in theirs:
            differences.append(f"extension {name} is missing")
        elif theirs[name] != version:
            differences.append(f"extension {name} {theirs[name] or '(no version)'} "
                               f"(the front runs {version or '(no version)'})")
    for name in sorted(set(theirs) - set(expected["extensions"])):
        differences.append(f"extension {name} is loaded there but not in the front")
    return differences


class RayServeBackend:
    """Runs the queue's jobs on the replicas of an Easel worker deployment (see the module's docstring)."""

    name = "ray"

    def __init__(self, context: "EaselContext", *, app_options: "AppOptions", address: str = "local",
                 workers: int = 1, replica_cpus: float | None = None, replica_gpus: float | None = None,
                 app_name: str = "easel", max_attempts: int = 3, torch_threads: int | None = None,
                 num_cpus: int | None = None) -> None:
        """``workers`` replicas of ``replica_gpus`` GPUs (default: 1 when the cluster has GPUs, else none)
        and ``replica_cpus`` CPUs (default 1) each. ``torch_threads``: CPU threads of each replica's
        PyTorch (default for CPU replicas: the front's, which gives bit-identical CPU images)."""
        self.context = context
        self.app_name = app_name
        self.max_attempts = max(1, int(max_attempts))
        self.workers = int(workers)
        self._started_cluster = connect(address, num_cpus=num_cpus)
        self._signals = job_signals()
        self.expected_versions = versions_of(context)
        if replica_gpus is None and ray.cluster_resources().get("GPU", 0) >= 1:
            replica_gpus = 1
        actor_options: dict[str, Any] = {"runtime_env": {"env_vars": worker_environment()}}
        if replica_gpus:
            actor_options.update(num_gpus=replica_gpus, num_cpus=replica_cpus or 1)
        else:
            actor_options["num_cpus"] = 1 if replica_cpus is None else replica_cpus
        if torch_threads is None and (not replica_gpus or context.device.type == "cpu"):
            import torch

            torch_threads = torch.get_num_threads()  # CPU maths as the front's own: images bit-identical
        config = worker_config(context, app_options, torch_threads)
        self._holds = device_holds()
        self._holds.hold.remote([], None)
        self.front_devices = front_device_keys(context.device, ray.get_runtime_context().get_node_id(),
                                               os.environ.get("CUDA_VISIBLE_DEVICES"))
        """The cluster keys of the device the front's training runs use (see ``ray_worker.front_device_keys``)."""
        self._held_reason: str | None = None
        self._held_replicas = 0
        self._attempts: dict[str, int] = {}
        self._finished_images: dict[str, dict[int, ImageRecord]] = {}
        serve.start(proxy_location="Disabled")  # no HTTP port: the front talks through the handle
        router = RequestRouterConfig(request_router_class=EaselRequestRouter,
                                     request_routing_stats_period_s=ROUTING_STATS_PERIOD_SECONDS)
        deployment = EaselWorker.options(num_replicas=self.workers, ray_actor_options=actor_options,
                                         request_router_config=router)
        self._handle = serve.run(deployment.bind(config), name=app_name, route_prefix=None)
        self._running = self._running_replicas()
        self._closed = threading.Event()
        self._check_versions(self._handle.describe.remote().result(timeout_s=120))
        self._poller = threading.Thread(target=self._poll_capacity, name="easel-ray-capacity", daemon=True)
        self._poller.start()

    # --- the queue's side ----------------------------------------------------------------

    def capacity(self) -> int:
        """Replicas up and not held by a training run (read every second): the jobs that may run at once."""
        return max(0, self._running - self._held_replicas)

    def device_in_use(self) -> str | None:
        """Why no job can start although replicas are up: a training run holds every replica's GPU."""
        if self._held_reason and self._running and self._held_replicas >= self._running:
            return self._held_reason
        return None

    def run(self, request: "GenerationRequest", job: "Job") -> GenerationResult:
        """Run ``request`` on a free replica. When the replica dies mid-job (or declines it) the job goes
        back to the queue (:class:`RequeueJob`) and runs again on another one; the images it finished are kept."""
        request.validate(self.context.max_side)  # the same message as in process, without a round trip
        if job.id not in self._finished_images:  # its first time here: what it leaves goes when it ends
            self._finished_images[job.id] = {}
            job.add_listener(self._forget_when_ended)
        attempt = self._attempts.get(job.id, 1)
        try:
            result = self._run_once(request, job, attempt)
        except WorkerDeclinedError as declined:
            time.sleep(RETRY_PAUSE_SECONDS)  # the router learns within a second that this replica is held
            raise RequeueJob(f"waiting: {declined}") from declined
        except WorkerLostError as lost:
            if attempt >= self.max_attempts or job.interrupted:
                self._forget(job)
                raise GenerationError(f"{lost} (after {attempt} attempts)") from lost
            self._attempts[job.id] = attempt + 1
            time.sleep(RETRY_PAUSE_SECONDS)  # Serve notices the dead replica and routes around it
            raise RequeueJob(f"retried: {lost}; it runs again on another worker (attempt {attempt + 1})",
                             attempt=attempt + 1) from lost
        except BaseException:
            self._forget(job)
            raise
        self._forget(job)
        return result

    def _forget(self, job: "Job") -> None:
        self._attempts.pop(job.id, None)
        self._finished_images.pop(job.id, None)

    def _forget_when_ended(self, job: "Job", event: dict[str, Any]) -> None:
        """A job given back to the queue may be cancelled there: drop its attempts and images then."""
        if event["kind"] in FINAL_EVENTS:
            self._forget(job)

    def close(self) -> None:
        """Stop the capacity poller; delete the deployment, and the cluster when this process started it."""
        if self._closed.is_set():
            return
        self._closed.set()
        try:
            serve.delete(self.app_name)
            if self._started_cluster:
                serve.shutdown()
                ray.shutdown()
        except Exception:  # noqa: BLE001 - closing must not raise at shutdown
            log.exception("Could not stop the Ray workers cleanly")

    # --- one attempt ---------------------------------------------------------------------

    def _run_once(self, request: "GenerationRequest", job: "Job", attempt: int) -> GenerationResult:
        started = time.monotonic()
        response = self._handle.options(stream=True, multiplexed_model_id=request.model).run.remote(
            request.to_dict(), job.id, self.context.settings.saved_values())
        finished = self._finished_images[job.id]
        stop_forwarding = threading.Event()
        forwarder = threading.Thread(target=self._forward_presses, args=(job, stop_forwarding), daemon=True,
                                     name=f"easel-ray-presses-{job.id[:8]}")
        forwarder.start()
        try:
            for event in response:
                kind = event["kind"]
                if kind == "declined":
                    raise WorkerDeclinedError(event["reason"])
                if kind == "hello":
                    self._check_versions(event)
                    job.emit("dispatched", worker=event["replica"], pid=event["pid"], node=event["node"],
                             devices=event.get("devices", []), attempt=attempt)
                elif kind == "image_started":
                    job.start_image(event["image"], event["images"], event["steps"])
                elif kind == "step":
                    preview = png_to_image(event["preview"]) if event.get("preview") else None
                    job.step(event["step"], preview)
                elif kind == "image":
                    if event["index"] not in finished:  # a retried job's images were saved the first time
                        finished[event["index"]] = self._save(request, job, event)
                elif kind == "error":
                    raise ERROR_TYPES.get(event["type"], EaselError)(event["message"])
                elif kind == "result":
                    return GenerationResult(images=[finished[index] for index in sorted(finished)],
                                            interrupted=bool(event["interrupted"]), skipped=int(event["skipped"]),
                                            seconds=time.monotonic() - started)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise WorkerLostError(f"the worker running this job stopped ({type(exc).__name__})") from exc
        except WorkerRefusedError:
            response.cancel()
            raise
        finally:
            stop_forwarding.set()
        raise WorkerLostError("the worker ended the job without a result")

    def _save(self, request: "GenerationRequest", job: "Job", event: dict[str, Any]) -> ImageRecord:
        """Decode a finished image and keep it in the front's outputs folder, as a local job does."""
        from webui.generation import keep_image
        from webui.tasks import get_task

        return keep_image(self.context.outputs_dir, request, get_task(request.task), job, event["index"],
                          png_to_image(event["png"]), event["seed"], event["infotext"])

    def _forward_presses(self, job: "Job", stop: threading.Event) -> None:
        """Send the job's Interrupt (once) and each Skip press to the replica through the signal actor."""
        interrupted = False
        while not stop.wait(PRESS_POLL_SECONDS):
            if job.interrupted and not interrupted:
                interrupted = True
                self._signals.send.remote(job.id, "interrupt")
            if job.take_skip():
                self._signals.send.remote(job.id, "skip")

    def _check_versions(self, found: dict[str, Any]) -> None:
        differences = version_differences(self.expected_versions, found)
        if differences:
            raise WorkerRefusedError(f"worker {found.get('replica', '?')} refused: it runs " + "; ".join(differences))

    # --- capacity ------------------------------------------------------------------------

    def _running_replicas(self) -> int:
        status = serve.status().applications.get(self.app_name)
        if status is None or DEPLOYMENT not in status.deployments:
            return 0
        return int(status.deployments[DEPLOYMENT].replica_states.get("RUNNING", 0))

    def _poll_capacity(self) -> None:
        while not self._closed.wait(CAPACITY_POLL_SECONDS):
            try:
                self._running = self._running_replicas()
            except Exception:  # noqa: BLE001 - the controller may be restarting: keep the last count
                log.debug("Could not read the Serve status", exc_info=True)
            try:
                self._follow_the_front_device()
            except Exception:  # noqa: BLE001 - a broken hook or a busy actor: keep the last state
                log.exception("Could not tell the workers whether the front's device is held")

    def _follow_the_front_device(self) -> None:
        """Hold the front's device for the replicas while the front's ``device_in_use`` hooks answer."""
        reason = self.context.device_in_use()
        if reason != self._held_reason:
            ray.get(self._holds.hold.remote(self.front_devices, reason), timeout=10)
            self._held_reason = reason
        self._held_replicas = ray.get(self._holds.held_replicas.remote(), timeout=10) if reason else 0
