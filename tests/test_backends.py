"""Backends (webui.backends): the default runs jobs in process and never imports ray; the queue
hands a job to a backend only when one of its workers is free."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

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
