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
  events as a local job's (``step`` with previews, ``image``), plus ``dispatched`` (which
  replica runs it) and ``retried``. The front saves the images.
* A replica that dies mid-job (process killed, node lost): the job runs again from the
  start on a replica that is up (at most ``max_attempts`` times); its ``retried`` event and
  :attr:`Job.message` say so.
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

from webui.backends.ray_worker import DEPLOYMENT, NAMESPACE, EaselWorker, job_signals, versions_of
from webui.errors import EaselError, GenerationError
from webui.jobs import GenerationResult, ImageRecord, RequestError, png_to_image

if TYPE_CHECKING:
    from webui.app import AppOptions
    from webui.context import EaselContext
    from webui.jobs import GenerationRequest, Job

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[2]
#: How often the number of running replicas is read from Serve, and Interrupt / Skip presses forwarded.
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
        """``workers`` replicas; ``replica_gpus`` defaults to 1 when the cluster has GPUs, else
        ``replica_cpus`` (default 1) CPUs each. ``torch_threads``: CPU threads of each replica's
        PyTorch (default for CPU replicas: the front's, which gives bit-identical CPU images)."""
        self.context = context
        self.app_name = app_name
        self.max_attempts = max(1, int(max_attempts))
        self.workers = int(workers)
        self._started_cluster = connect(address, num_cpus=num_cpus)
        self._signals = job_signals()
        self.expected_versions = versions_of(context)
        if replica_gpus is None and replica_cpus is None and ray.cluster_resources().get("GPU", 0) >= 1:
            replica_gpus = 1
        actor_options: dict[str, Any] = {"runtime_env": {"env_vars": worker_environment()}}
        if replica_gpus:
            actor_options.update(num_gpus=replica_gpus, num_cpus=replica_cpus or 1)
        else:
            actor_options["num_cpus"] = 1 if replica_cpus is None else replica_cpus
        if torch_threads is None and not replica_gpus:
            import torch

            torch_threads = torch.get_num_threads()  # CPU replicas: the front's maths, images bit-identical
        config = worker_config(context, app_options, torch_threads)
        serve.start(proxy_location="Disabled")  # no HTTP port: the front talks through the handle
        deployment = EaselWorker.options(num_replicas=self.workers, ray_actor_options=actor_options)
        self._handle = serve.run(deployment.bind(config), name=app_name, route_prefix=None)
        self._capacity = self._running_replicas()
        self._closed = threading.Event()
        self._check_versions(self._handle.describe.remote().result(timeout_s=120))
        self._poller = threading.Thread(target=self._poll_capacity, name="easel-ray-capacity", daemon=True)
        self._poller.start()

    # --- the queue's side ----------------------------------------------------------------

    def capacity(self) -> int:
        """Replicas up right now (read from Serve every second): the jobs that may run at once."""
        return self._capacity

    def run(self, request: "GenerationRequest", job: "Job") -> GenerationResult:
        """Run ``request`` on a free replica; again on another one if its replica dies mid-job."""
        request.validate(self.context.max_side)  # the same message as in process, without a round trip
        attempt = 1
        while True:
            try:
                return self._run_once(request, job, attempt)
            except WorkerLostError as lost:
                if attempt >= self.max_attempts or job.interrupted:
                    raise GenerationError(f"{lost} (after {attempt} attempts)") from lost
                attempt += 1
                time.sleep(RETRY_PAUSE_SECONDS)  # Serve notices the dead replica and routes around it
                job.message = f"retried: {lost}; running again on another worker (attempt {attempt})"
                log.warning("Job %s: %s", job.id, job.message)
                job.emit("retried", attempt=attempt, message=str(lost))

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
            request.to_dict(), job.id)
        stop_forwarding = threading.Event()
        forwarder = threading.Thread(target=self._forward_presses, args=(job, stop_forwarding), daemon=True,
                                     name=f"easel-ray-presses-{job.id[:8]}")
        forwarder.start()
        try:
            for event in response:
                kind = event["kind"]
                if kind == "hello":
                    self._check_versions(event)
                    job.emit("dispatched", worker=event["replica"], pid=event["pid"], node=event["node"],
                             attempt=attempt)
                elif kind == "image_started":
                    job.start_image(event["image"], event["images"], event["steps"])
                elif kind == "step":
                    preview = png_to_image(event["preview"]) if event.get("preview") else None
                    job.step(event["step"], preview)
                elif kind == "error":
                    raise ERROR_TYPES.get(event["type"], EaselError)(event["message"])
                elif kind == "result":
                    return self._result(request, job, event, time.monotonic() - started)
        except (ray.exceptions.RayActorError, ray.exceptions.ActorUnavailableError) as exc:
            raise WorkerLostError(f"the worker running this job stopped ({type(exc).__name__})") from exc
        except WorkerRefusedError:
            response.cancel()
            raise
        finally:
            stop_forwarding.set()
        raise WorkerLostError("the worker ended the job without a result")

    def _result(self, request: "GenerationRequest", job: "Job", event: dict[str, Any],
                seconds: float) -> GenerationResult:
        """Decode the images and save them in the front's outputs folder, as a local job does."""
        from webui.outputs import save_image
        from webui.tasks import get_task

        result = GenerationResult(interrupted=bool(event["interrupted"]), skipped=int(event["skipped"]),
                                  seconds=seconds)
        folder = get_task(request.task).output_folder
        for index, item in enumerate(event["images"]):
            image = png_to_image(item["png"])
            path = (save_image(image, self.context.outputs_dir, folder, item["infotext"], item["seed"])
                    if request.save else None)
            result.images.append(ImageRecord(image=image, seed=item["seed"], infotext=item["infotext"],
                                             path=str(path) if path else None))
            job.emit("image", index=index, seed=item["seed"], path=str(path) if path else None)
        return result

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
                self._capacity = self._running_replicas()
            except Exception:  # noqa: BLE001 - the controller may be restarting: keep the last count
                log.debug("Could not read the Serve status", exc_info=True)
