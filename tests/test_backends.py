"""Backends (webui.backends): the default runs jobs in process and never imports ray; the queue
hands a job to a backend only when one of its workers is free."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from webui.backends import RequeueJob
from webui.jobs import GenerationRequest, GenerationResult, Job
from webui.queue import JobQueue

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_BACKEND_SCRIPT = """
import sys, tempfile
from pathlib import Path
sys.path.insert(0, {root!r})
from webui.testing import make_options
from webui.app import create_context
from webui.backends.local import InProcessBackend
from webui.jobs import GenerationRequest

context = create_context(make_options(Path(tempfile.mkdtemp()), model="tiny"))
result = context.generate(GenerationRequest(prompt="a red circle", model="tiny", width=64, height=64, steps=2,
                                            seed=3, save=False))
assert len(result.images) == 1 and result.images[0].image.size == (64, 64)
assert isinstance(context.job_queue()._run.__self__, InProcessBackend)
print("ray imported:", sorted(name for name in sys.modules if name == "ray" or name.startswith("ray.")))
"""


def test_the_default_backend_runs_a_job_in_process_without_importing_ray(tmp_path):
    completed = subprocess.run([sys.executable, "-c", DEFAULT_BACKEND_SCRIPT.format(root=str(ROOT))],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path,
                               env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "ray imported: []" in completed.stdout, completed.stdout


class _Held:
    """A run function whose jobs wait until released, recording how many run at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0
        self.release = threading.Event()

    def __call__(self, request: GenerationRequest, job: Job) -> GenerationResult:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            self.release.wait(10)
            return GenerationResult()
        finally:
            with self.lock:
                self.running -= 1


def _wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_queue_runs_as_many_jobs_at_once_as_the_backend_has_free_workers():
    held = _Held()
    slots = {"free": 0}
    queue = JobQueue(held, slots=lambda: slots["free"])
    jobs = [queue.submit(GenerationRequest(model="tiny")) for _ in range(5)]
    time.sleep(0.3)
    assert held.running == 0, "no worker is up yet: nothing may be handed out"
    assert [job.status for job in jobs] == ["queued"] * 5
    slots["free"] = 2
    _wait_until(lambda: held.running == 2)
    time.sleep(0.3)
    assert held.running == 2, "a third job went out while both workers were busy"
    snapshot = queue.snapshot()
    assert snapshot["running_jobs"] == [jobs[0].id, jobs[1].id] and snapshot["running"] == jobs[0].id
    assert snapshot["waiting"] == [job.id for job in jobs[2:]]
    assert [job.position for job in jobs[2:]] == [2, 3, 4]
    held.release.set()
    for job in jobs:
        queue.wait(job, timeout=10)
    assert held.most == 2
    assert [job.status for job in jobs] == ["finished"] * 5
    queue.close()


def test_a_job_its_backend_gives_back_runs_again_first_in_line_and_says_it_was_retried():
    """A worker died under job A (RequeueJob): A goes back to the head of the queue, ahead of B,
    which was submitted while A ran, and its events say it was retried; no slot stays taken."""
    order: list[str] = []
    a_running = threading.Event()
    b_queued = threading.Event()
    names: dict[str, str] = {}

    def run(request: GenerationRequest, job: Job) -> GenerationResult:
        name = names[job.id]
        order.append(name)
        if order == ["A"]:
            a_running.set()
            assert b_queued.wait(10)
            raise RequeueJob("retried: the worker running this job stopped; it runs again (attempt 2)", attempt=2)
        return GenerationResult()

    queue = JobQueue(run)
    job_a = Job()
    names[job_a.id] = "A"
    queue.submit(GenerationRequest(model="tiny"), job_a)
    assert a_running.wait(10)
    job_b = Job()
    names[job_b.id] = "B"
    queue.submit(GenerationRequest(model="tiny"), job_b)
    b_queued.set()
    queue.wait(job_a, timeout=10)
    queue.wait(job_b, timeout=10)
    assert order == ["A", "A", "B"], "the retried job did not run again before the job queued behind it"
    kinds_a = [event["kind"] for event in job_a.events()]
    assert kinds_a == ["queued", "started", "retried", "queued", "started", "finished"]
    retried = next(event for event in job_a.events() if event["kind"] == "retried")
    assert retried["attempt"] == 2 and "worker running this job stopped" in retried["message"]
    assert job_a.status == job_b.status == "finished"
    assert "retried" in job_a.progress_text() or "retried" in job_a.message
    queue.close()


def test_a_job_a_worker_declined_waits_again_without_counting_as_a_retry():
    declined: list[str] = []

    def run(request: GenerationRequest, job: Job) -> GenerationResult:
        if not declined:
            declined.append(job.id)
            raise RequeueJob("waiting: a training run is using GPU 0")
        return GenerationResult()

    queue = JobQueue(run)
    job = queue.submit(GenerationRequest(model="tiny"))
    queue.wait(job, timeout=10)
    assert [event["kind"] for event in job.events()] == ["queued", "started", "queued", "started", "finished"]
    queue.close()


def test_a_job_given_back_while_the_server_stops_is_kept_for_the_restart():
    def run(request: GenerationRequest, job: Job) -> GenerationResult:
        queue.close()  # the server stops while the job's worker dies
        raise RequeueJob("retried: the worker running this job stopped", attempt=2)

    queue = JobQueue(run)
    job = queue.submit(GenerationRequest(model="tiny"))
    _wait_until(lambda: job.done)
    final = job.events()[-1]
    assert final["kind"] == "cancelled" and final["shutdown"] is True


def test_jobs_no_worker_can_take_say_why_when_the_backend_says_every_workers_device_is_held():
    """The queue's worker already waits for a free worker when the last one is held: it still
    looks at the device again and the waiting job shows why."""
    state = {"free": 0, "held": False}
    reason = "a training run (probe, step 3/10) is using every worker's GPU"
    queue = JobQueue(lambda request, job: GenerationResult(), slots=lambda: state["free"],
                     device_in_use=lambda: reason if state["held"] else None)
    job = queue.submit(GenerationRequest(model="tiny"))
    time.sleep(0.3)  # the worker thread is waiting for a free worker now
    state["held"] = True
    _wait_until(lambda: any(event["kind"] == "waiting" for event in job.events()), seconds=5)
    assert job.message == f"waiting: {reason}" and job.status == "queued"
    state.update(free=1, held=False)
    queue.wait(job, timeout=10)
    assert job.status == "finished" and job.message == ""
    queue.close()


def test_a_queue_closes_its_backend():
    closed = []
    queue = JobQueue(lambda request, job: GenerationResult(), on_close=lambda: closed.append(True))
    queue.close()
    assert closed == [True]


LOCAL_CLUSTER_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from webui.backends import bind_ray_to_localhost
assert bind_ray_to_localhost()
from webui.backends.ray_serve import connect
import ray
assert connect("local", num_cpus=1)
try:
    print("node", ray.util.get_node_ip_address(), "gcs", ray.get_runtime_context().gcs_address)
finally:
    ray.shutdown()
"""


@pytest.mark.slow
def test_a_ray_cluster_easel_starts_listens_on_localhost_only(tmp_path):
    pytest.importorskip("ray", reason="ray[serve] is not installed (requirements-ray.txt)")
    env = {key: value for key, value in __import__("os").environ.items() if not key.startswith("RAY_")}
    completed = subprocess.run([sys.executable, "-c", LOCAL_CLUSTER_SCRIPT.format(root=str(ROOT))],
                               capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert completed.returncode == 0, completed.stderr[-3000:]
    line = next(line for line in completed.stdout.splitlines() if line.startswith("node "))
    _, node, _, gcs = line.split()
    assert node == "127.0.0.1" and gcs.startswith("127.0.0.1:"), line


def test_the_backend_flags_reach_the_app_options():
    import launch
    from webui.server import options_from_args

    default = options_from_args(launch.parse_args([])[0])
    assert (default.backend, default.ray_address, default.workers) == ("local", "local", 1)
    args, _ = launch.parse_args(["--backend", "ray", "--ray-address", "10.0.0.5:6379", "--workers", "3"])
    options = options_from_args(args)
    assert (options.backend, options.ray_address, options.workers) == ("ray", "10.0.0.5:6379", 3)


def test_the_progress_line_says_when_a_job_was_retried_on_another_worker():
    job = Job()
    job.emit("started")
    job.start_image(0, 1, 10)
    job.step(3)
    assert "retried" not in job.progress_text()
    job.message = "retried: the worker running this job stopped (ActorDiedError); running again on another worker"
    assert job.progress_text().startswith("Image 1/1 · step 3/10")
    assert "retried: the worker running this job stopped" in job.progress_text()
