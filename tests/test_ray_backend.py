"""The backend contract, run against both backends: the in-process default and Ray Serve workers.

On a 2-core CPU machine: one Ray cluster per module (``ray.init(num_cpus=2)``), 2 CPU replicas
of half a CPU each. Every job's images must be bit-identical to the in-process path's at the
same seed; progress, previews and positions reach the queue and ``/sdapi/v1/progress``;
Interrupt stops a remote job within one step and the replica survives; a replica killed
mid-job leaves the job to the other one. Skipped when ``ray[serve]`` is not installed.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from webui.backends import bind_ray_to_localhost  # noqa: E402

bind_ray_to_localhost()  # before ray is imported: the module's cluster listens on 127.0.0.1 only
pytest.importorskip("ray.serve", reason="ray[serve] is not installed (requirements-ray.txt)")

from webui.generation import run_generation  # noqa: E402
from webui.jobs import GenerationRequest, png_to_image  # noqa: E402
from webui.testing import make_options  # noqa: E402

pytestmark = pytest.mark.slow

MODELS = ("tiny", "tiny-sd2")
FAST = {"prompt": "a red circle on blue", "width": 64, "height": 64, "steps": 3}

# A drop-in extension the front and every replica load: it slows each step down on request,
# so a test can press Interrupt or kill a worker while a job runs.
SLOW_STEPS = '''"""Test extension: sleep request.extras["slow_steps.seconds"] at every step."""
import time

from webui.api import hookimpl

EASEL_API_VERSION = "1.0"
__version__ = "1.0"


@hookimpl
def pipeline_call_kwargs(request, model):
    delay = float(request.extras.get("slow_steps.seconds", 0) or 0)
    if not delay:
        return None

    def sleep_at_each_step(pipe, step, timestep, callback_kwargs):
        time.sleep(delay)
        return {}

    return {"callback_on_step_end": sleep_at_each_step}
'''


# A second drop-in extension: a saved setting it reads when a model loads shows in the infotext (so a
# test sees whether the front's settings reach the replicas), and a setting that makes it say a training
# run holds the front's device.
PROBE = '''"""Test extension: setting probe.tag goes into the infotext; probe.holding makes the device held."""
from webui.api import hookimpl

EASEL_API_VERSION = "2.0"
__version__ = "1.0"


@hookimpl
def configure_pipeline(model, context):
    model.extension_state["probe"] = context.setting("probe.tag", "")


@hookimpl
def infotext_fields(request, model):
    tag = model.extension_state.get("probe")
    return {"Probe tag": tag} if tag else None


@hookimpl
def device_in_use(context):
    return context.setting("probe.holding", "") or None
'''


def slow(seconds: float, **fields) -> GenerationRequest:
    return GenerationRequest(**{**FAST, "model": "tiny", "save": False, **fields,
                                "extras": {"slow_steps.seconds": seconds}})


@pytest.fixture(scope="module")
def dropin_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("dropin")
    (folder / "slow_steps").mkdir()
    (folder / "slow_steps" / "__init__.py").write_text(SLOW_STEPS, encoding="utf-8")
    (folder / "probe").mkdir()
    (folder / "probe" / "__init__.py").write_text(PROBE, encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster for the module: 2 CPUs, no dashboard, and 2 GPUs as Ray counts them.

    There is no GPU here: Ray only hands out the GPU ids 0 and 1 (one per replica, ``num_gpus=1``,
    the path a machine with GPUs takes), and the replicas compute on the CPU as the front does.
    """
    import ray
    from ray import serve

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, namespace="easel", log_to_driver=False)
    try:
        yield
    finally:
        serve.shutdown()
        ray.shutdown()


@pytest.fixture(scope="module", params=["local", "ray"])
def app(request, tmp_path_factory, dropin_folder):
    """An app whose queue runs jobs on the backend under test (ray: 2 replicas, half a CPU each)."""
    from webui.app import create_context

    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
    options = make_options(tmp_path_factory.mktemp(f"app-{request.param}"), model="tiny",
                           extra_extension_dirs=[dropin_folder], backend=request.param, workers=2,
                           backend_options={"replica_cpus": 0.5} if request.param == "ray" else {})
    context = create_context(options)
    assert type(context.job_queue()._run.__self__).__name__ == {"local": "InProcessBackend",
                                                                "ray": "RayServeBackend"}[request.param]
    context.backend_kind = request.param
    try:
        yield context
    finally:
        context.close()


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def in_process(context, request: GenerationRequest):
    """The reference: the one generation path, run at once in this process."""
    return run_generation(context, GenerationRequest.from_dict({**request.to_dict(), "save": False}))


def kinds(job) -> list[str]:
    return [event["kind"] for event in job.events()]


def wait_for(job, condition, seconds: float = 120.0):
    """The first event of ``job`` that satisfies ``condition``, waiting up to ``seconds``."""
    deadline = time.monotonic() + seconds
    seen = 0
    while time.monotonic() < deadline:
        events = job.wait_events(seen, timeout=0.2)
        for event in events:
            if condition(event):
                return event
        seen += len(events)
        assert not job.done, f"the job ended ({job.status}) before the awaited event: {kinds(job)}"
    raise AssertionError(f"timed out; events so far: {kinds(job)}")


def test_jobs_of_two_models_match_the_in_process_images_bit_for_bit(app):
    queue = app.job_queue()
    requests = [GenerationRequest(**FAST, model=MODELS[index % 2], seed=100 + index, save=True) for index in range(8)]
    jobs = [queue.submit(request) for request in requests]
    results = [queue.wait(job, timeout=600) for job in jobs]
    for request, job, result in zip(requests, jobs, results):
        reference = in_process(app, request)
        assert len(result.images) == 1
        got, expected = result.images[0], reference.images[0]
        assert got.seed == expected.seed == request.seed
        assert np.array_equal(pixels(got.image), pixels(expected.image)), f"{request.model} seed {request.seed}"
        assert got.infotext == expected.infotext
        saved = Path(got.path)
        assert saved.is_file() and saved.is_relative_to(app.outputs_dir), "the front saves in its own outputs"
        assert np.array_equal(pixels(png_to_image(saved.read_bytes())), pixels(expected.image))
        steps = [event for event in job.events() if event["kind"] == "step"]
        assert [event["step"] for event in steps] == [1, 2, 3]
        assert [kind for kind in kinds(job) if kind not in ("dispatched", "queued", "step")] == \
            ["started", "image", "finished"]
    if app.backend_kind == "ray":
        workers = {event["worker"] for job in jobs for event in job.events() if event["kind"] == "dispatched"}
        assert len(workers) == 2, f"the jobs did not run across both replicas: {workers}"
        assert not list(app.outputs_dir.glob("**/easel-worker-*")), "a replica saved into the front's outputs"


def test_progress_and_previews_reach_the_queue_and_the_progress_endpoint(app):
    from fastapi.testclient import TestClient

    from webui.rest import ApiOptions, create_api_app

    client = TestClient(create_api_app(app, ApiOptions()))
    queue = app.job_queue()
    job = queue.submit(slow(0.4, steps=6, seed=7))
    assert kinds(job)[0] == "queued"
    seen_steps, preview_seen = set(), False
    deadline = time.monotonic() + 120
    while not job.done and time.monotonic() < deadline:
        answer = client.get("/sdapi/v1/progress").json()
        if answer["state"]["job"] == job.id:
            seen_steps.add(answer["state"]["sampling_step"])
            preview_seen |= answer["current_image"] is not None
            if answer["state"]["sampling_step"]:  # 0 steps while the model loads, then the job's steps
                assert answer["state"]["sampling_steps"] == 6
        time.sleep(0.1)
    queue.wait(job, timeout=60)
    assert len(seen_steps - {0}) >= 3, f"the endpoint saw too few steps: {sorted(seen_steps)}"
    assert preview_seen, "no preview reached /sdapi/v1/progress"
    steps = [event for event in job.events() if event["kind"] == "step"]
    assert [event["step"] for event in steps] == [1, 2, 3, 4, 5, 6]
    assert [event["step"] for event in steps if event.get("preview")] == [2, 4, 6]


def test_interrupt_stops_a_job_within_one_step_and_the_worker_goes_on(app):
    queue = app.job_queue()
    job = queue.submit(slow(0.3, steps=20, seed=11))
    wait_for(job, lambda event: event["kind"] == "step" and event["step"] >= 2)
    pressed_at = job.snapshot()["step"]
    assert queue.cancel(job) == "interrupted"
    result = queue.wait(job, timeout=120)
    last_step = max(event["step"] for event in job.events() if event["kind"] == "step")
    assert job.status == "interrupted" and result.interrupted
    assert last_step <= pressed_at + 1, f"pressed after step {pressed_at}, it went on to step {last_step}"
    assert len(result.images) == 1, "what was drawn when Interrupt was pressed is kept"
    after = queue.wait(queue.submit(GenerationRequest(**FAST, model="tiny", seed=12, save=False)), timeout=300)
    assert np.array_equal(pixels(after.images[0].image),
                          pixels(in_process(app, GenerationRequest(**FAST, model="tiny", seed=12)).images[0].image))


def test_skip_ends_the_current_image_within_one_step_and_the_job_goes_on(app):
    queue = app.job_queue()
    job = queue.submit(slow(0.3, steps=6, seed=31, batch_count=2))
    wait_for(job, lambda event: event["kind"] == "step" and event["image"] == 0 and event["step"] >= 2)
    pressed_at = job.snapshot()["step"]
    job.skip()
    result = queue.wait(job, timeout=120)
    steps = [event for event in job.events() if event["kind"] == "step"]
    first = max(event["step"] for event in steps if event["image"] == 0)
    second = [event["step"] for event in steps if event["image"] == 1]
    assert first <= pressed_at + 1, f"pressed after step {pressed_at}, image 1 went on to step {first}"
    assert second == [1, 2, 3, 4, 5, 6], "the next image runs in full"
    assert job.status == "finished" and result.skipped == 1 and len(result.images) == 2


def test_a_job_whose_worker_is_killed_mid_job_completes_on_the_other_worker(app):
    """Killed after its first image was saved: the job goes back to the queue, runs again on the other
    replica, keeps the first image (saved once) and adds the second, both as in process."""
    if app.backend_kind != "ray":
        pytest.skip("only remote workers can die under a running job")
    queue = app.job_queue()
    request = slow(0.3, steps=6, seed=21, batch_count=2, save=True)
    job = queue.submit(request)
    first = wait_for(job, lambda event: event["kind"] == "dispatched")
    wait_for(job, lambda event: event["kind"] == "image")
    wait_for(job, lambda event: event["kind"] == "step" and event["image"] == 1 and event["step"] >= 2)
    os.kill(first["pid"], signal.SIGKILL)
    result = queue.wait(job, timeout=300)
    assert job.status == "finished", kinds(job)
    retried = [event for event in job.events() if event["kind"] == "retried"]
    assert len(retried) == 1 and retried[0]["attempt"] == 2
    after_retry = kinds(job)[kinds(job).index("retried"):]
    assert after_retry[:3] == ["retried", "queued", "started"], "the job did not go back to the queue"
    dispatched = [event for event in job.events() if event["kind"] == "dispatched"]
    assert dispatched[-1]["pid"] != first["pid"]
    saved = [event for event in job.events() if event["kind"] == "image"]
    assert [event["index"] for event in saved] == [0, 1], "an image was lost or saved twice"
    reference = in_process(app, request)
    assert [record.seed for record in result.images] == [21, 22]
    for got, expected, event in zip(result.images, reference.images, saved):
        assert np.array_equal(pixels(got.image), pixels(expected.image))
        assert np.array_equal(pixels(png_to_image(Path(event["path"]).read_bytes())), pixels(expected.image))


def test_a_job_fails_with_the_reason_when_its_worker_runs_other_versions(app):
    if app.backend_kind != "ray":
        pytest.skip("only remote workers can run other versions")
    backend = app.job_queue()._run.__self__
    front = backend.expected_versions
    backend.expected_versions = {**front, "extensions": {**front["extensions"], "slow_steps": "2.0"}}
    try:
        job = app.job_queue().submit(GenerationRequest(**FAST, model="tiny", seed=41, save=False))
        with pytest.raises(Exception, match=r"refused: it runs extension slow_steps 1.0 \(the front runs 2.0\)"):
            app.job_queue().wait(job, timeout=120)
        assert job.status == "failed"
    finally:
        backend.expected_versions = front


def test_a_worker_with_other_versions_is_refused_with_the_reason():
    from webui.backends.ray_serve import RayServeBackend, WorkerRefusedError, version_differences

    front = {"easel": "0.1.0", "extensions": {"lora": "1.0", "vae": "1.0"}}
    assert version_differences(front, {"easel": "0.1.0", "extensions": {"lora": "1.0", "vae": "1.0"}}) == []
    found = {"replica": "r1", "easel": "0.2.0", "extensions": {"lora": "1.1", "extra": "3"}}
    assert version_differences(front, found) == [
        "Easel 0.2.0 (the front runs 0.1.0)", "extension lora 1.1 (the front runs 1.0)",
        "extension vae is missing", "extension extra is loaded there but not in the front"]
    backend = object.__new__(RayServeBackend)
    backend.expected_versions = front
    with pytest.raises(WorkerRefusedError, match="worker r1 refused: it runs Easel 0.2.0"):
        backend._check_versions(found)


def test_a_settings_change_in_the_front_reaches_the_workers_with_the_next_job(app):
    """Settings > Apply in the front (save, then reload the models) changes the next job's images
    on every backend: the probe extension reads its setting when a model loads."""
    queue = app.job_queue()
    try:
        for tag in ("first", "second"):
            app.settings.set("probe.tag", tag)
            app.pipelines.reconfigure()  # what the Settings tab's Apply does
            jobs = [queue.submit(GenerationRequest(**FAST, model="tiny", seed=50 + index, save=False))
                    for index in range(2)]  # two at once: with Ray, one on each replica
            for job in jobs:
                result = queue.wait(job, timeout=300)
                assert f"Probe tag: {tag}" in result.images[0].infotext, (tag, result.images[0].infotext)
    finally:
        app.settings.set("probe.tag", "")
        app.pipelines.reconfigure()


def wait_until(condition, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_while_a_training_run_holds_one_gpu_its_replica_takes_no_jobs_and_the_other_does(app):
    if app.backend_kind != "ray":
        pytest.skip("the in-process backend pauses its one queue (tests/test_train_queue.py)")
    import ray

    from webui.backends.ray_serve import CAPACITY_POLL_SECONDS
    from webui.backends.ray_worker import ROUTING_STATS_PERIOD_SECONDS, device_key

    backend = app.job_queue()._run.__self__
    queue = app.job_queue()
    node = ray.get_runtime_context().get_node_id()
    gpu0, gpu1 = device_key(node, 0), device_key(node, 1)
    front_devices = backend.front_devices
    backend.front_devices = [gpu0]  # the front trains on its first GPU (here the front computes on the CPU)
    try:
        app.settings.set("probe.holding", "a training run (probe, step 3/10) is using GPU 0")
        wait_until(lambda: backend.capacity() == 1)
        time.sleep(2 * ROUTING_STATS_PERIOD_SECONDS + CAPACITY_POLL_SECONDS)  # the router has read the stats
        jobs = [queue.submit(GenerationRequest(**FAST, model=MODELS[index % 2], seed=70 + index, save=False))
                for index in range(4)]
        time.sleep(0.5)
        assert len(queue.snapshot()["running_jobs"]) <= 1, "two jobs went out with one replica free"
        for job in jobs:
            queue.wait(job, timeout=300)
        dispatched = [event for job in jobs for event in job.events() if event["kind"] == "dispatched"]
        assert len(dispatched) == 4 and {tuple(event["devices"]) for event in dispatched} == {(gpu1,)}, dispatched

        backend.front_devices = [gpu0, gpu1]  # now it holds both
        app.settings.set("probe.holding", "a training run (probe, step 4/10) is using both GPUs")
        wait_until(lambda: backend.capacity() == 0)
        waiting_job = queue.submit(GenerationRequest(**FAST, model="tiny", seed=80, save=False))
        waiting = wait_for(waiting_job, lambda event: event["kind"] == "waiting")
        assert "is using both GPUs" in waiting["message"]
        time.sleep(1.5)
        assert waiting_job.status == "queued" and "started" not in kinds(waiting_job)
    finally:
        app.settings.set("probe.holding", "")
        backend.front_devices = front_devices
    result = queue.wait(waiting_job, timeout=300)
    assert waiting_job.status == "finished" and len(result.images) == 1
    wait_until(lambda: backend.capacity() == 2)


def test_the_front_device_maps_to_the_gpu_ray_gives_the_replica_on_it():
    from webui.backends.ray_worker import device_key, front_device_keys

    import torch

    assert front_device_keys(torch.device("cuda", 0), "n1", None) == [device_key("n1", 0)] == ["n1:gpu0"]
    assert front_device_keys(torch.device("cuda", 1), "n1", "2,3") == ["n1:gpu3"]
    assert front_device_keys(torch.device("cuda"), "n1", "5") == ["n1:gpu5"]
    assert front_device_keys(torch.device("cpu"), "n1", "0") == ["n1:cpu"] == [device_key("n1")]


def test_the_router_leaves_held_replicas_out_and_prefers_the_one_holding_the_model():
    from webui.backends.ray_router import rank_replicas

    class Replica:
        def __init__(self, name: str, models: set[str], held: str = "") -> None:
            self.name, self.multiplexed_model_ids, self.routing_stats = name, models, {"held": held}

        def __repr__(self) -> str:
            return self.name

    a, b, c = Replica("a", {"tiny"}), Replica("b", {"tiny-sd2"}), Replica("c", {"tiny"}, held="training")
    assert rank_replicas([a, b, c], "tiny") == [[a], [b]]
    assert rank_replicas([a, b, c], "tiny-sd2") == [[b], [a]]
    assert rank_replicas([a, b, c], None) == [[a, b]]
    assert rank_replicas([c], "tiny") == []
    fresh = Replica("d", set())
    fresh.routing_stats = {}  # not reported yet: free
    assert rank_replicas([fresh], "tiny") == [[fresh]]
