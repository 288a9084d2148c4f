"""Easel's own job routes (``/easel/v1/jobs``) over a real app context and the tiny model:
submit -> poll -> the PNG, cancel, 404s, the image route's folder check, jobs that survive a
restart, webhooks. The device is held by a test extension (``device_in_use``) wherever jobs must
stay queued, so nothing races the clock."""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from conftest import free_port, make_options
from webui.api import hookimpl
from webui.job_store import STORE_FILE, JobRecord
from webui.jobs import GenerationRequest
from webui.outputs import read_infotext
from webui.rest.easel_v1 import create_router

WAIT = 180  # seconds; every wait below ends on an event long before this
TINY = dict(model="tiny", width=64, height=64, steps=2, cfg_scale=5.0)


class DeviceHold:
    """A test extension that says the device is in use while ``held`` is set."""

    def __init__(self, held: bool = True) -> None:
        self.held = threading.Event()
        if held:
            self.held.set()

    @hookimpl
    def device_in_use(self, context):
        return "held by the test" if self.held.is_set() else None


def make_app(tmp_path, **overrides):
    """(context, TestClient) of an app on ``tmp_path`` serving only the ``/easel/v1`` router."""
    from webui.app import create_context

    context = create_context(make_options(tmp_path, **overrides))
    app = FastAPI()
    app.include_router(create_router(context))
    return context, TestClient(app)


def submit(client, prompt: str, seed: int, task: str = "txt2img", **fields):
    response = client.post("/easel/v1/jobs", json={"task": task, "request": {"prompt": prompt, "seed": seed, **TINY},
                                                   **fields})
    assert response.status_code == 202, response.text
    return response.json()


def wait_until_ended(client, job_id: str) -> dict:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        job = client.get(f"/easel/v1/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not end in {WAIT} s: {job}")


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_a_txt2img_job_is_accepted_at_once_runs_and_serves_its_png(tmp_path):
    context, client = make_app(tmp_path)
    accepted = submit(client, "a red circle", seed=1234)
    # answered at once; the idle worker may already have taken it (a held queue is tested below)
    assert (accepted["status"], accepted["position"]) in (("queued", 1), ("running", 0)), accepted
    assert accepted["url"] == f"/easel/v1/jobs/{accepted['id']}"

    job = wait_until_ended(client, accepted["id"])
    assert job["status"] == "finished", job
    assert job["seeds"] == [1234] and job["started"] >= job["created"] and job["ended"] >= job["started"]
    kinds = [event["kind"] for event in job["events"]]
    assert kinds[0] == "queued" and "started" in kinds and "step" in kinds and kinds[-1] == "finished"
    assert str(tmp_path) not in json.dumps(job)  # no server file paths, images have URLs
    assert len(job["images"]) == 1 and "Seed: 1234" in job["infotexts"][0] and "Size: 64x64" in job["infotexts"][0]

    served = client.get(job["images"][0])
    assert served.status_code == 200 and served.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(served.content))
    assert image.size == (64, 64)
    assert read_infotext(image) == job["infotexts"][0]  # the PNG carries the job's parameters
    # the served pixels are the requested image: the same request run in process gives the same pixels
    reference = context.generate(GenerationRequest(prompt="a red circle", seed=1234, save=False, **TINY))
    assert np.array_equal(png_pixels(served.content), np.asarray(reference.images[0].image.convert("RGB")))

    listed = client.get("/easel/v1/jobs").json()["jobs"]
    assert [item["id"] for item in listed] == [accepted["id"]] and listed[0]["status"] == "finished"
    assert (tmp_path / "data" / STORE_FILE).is_file()


def test_a_queued_job_can_be_deleted_and_never_runs(tmp_path):
    hold = DeviceHold()
    context, client = make_app(tmp_path, extra_plugins={"hold": hold})
    cancelled = submit(client, "cancel me", seed=1)
    kept = submit(client, "keep me", seed=2)
    assert (cancelled["position"], kept["position"]) == (1, 2)

    answer = client.delete(f"/easel/v1/jobs/{cancelled['id']}")
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    assert client.get(f"/easel/v1/jobs/{kept['id']}").json()["position"] == 1  # moved up
    assert client.delete(f"/easel/v1/jobs/{cancelled['id']}").status_code == 409  # it has already ended

    hold.held.clear()
    assert wait_until_ended(client, kept["id"])["status"] == "finished"
    record = client.get(f"/easel/v1/jobs/{cancelled['id']}").json()
    assert record["status"] == "cancelled" and record["started"] is None and record["images"] == []
    assert [event["kind"] for event in record["events"]][-1] == "cancelled"


def test_deleting_a_running_job_interrupts_it(tmp_path):
    context, client = make_app(tmp_path)
    accepted = client.post("/easel/v1/jobs", json={"task": "txt2img", "request": {
        "prompt": "long", "seed": 3, **dict(TINY, steps=150), "batch_count": 4}}).json()
    wait_for(lambda: client.get(f"/easel/v1/jobs/{accepted['id']}").json()["progress"] is not None, "the first step")
    answer = client.delete(f"/easel/v1/jobs/{accepted['id']}")
    assert answer.status_code == 200 and answer.json()["status"] == "interrupting"
    job = wait_until_ended(client, accepted["id"])
    assert job["status"] == "interrupted"
    assert len(job["images"]) < 4  # it stopped long before the 4 x 150 steps were done


def test_a_full_queue_answers_503_with_retry_after_and_records_nothing(tmp_path):
    context, client = make_app(tmp_path, extra_plugins={"hold": DeviceHold()}, setting_overrides={"queue.limit": 1})
    accepted = submit(client, "fits", seed=1)
    refused = client.post("/easel/v1/jobs", json={"task": "txt2img", "request": {"prompt": "too many", **TINY}})
    assert refused.status_code == 503 and refused.headers["Retry-After"].isdigit()
    assert "queue is full" in refused.json()["detail"]
    assert [job["id"] for job in client.get("/easel/v1/jobs").json()["jobs"]] == [accepted["id"]]
    context.close()


def test_unknown_jobs_and_bad_requests_get_clear_errors(tmp_path):
    context, client = make_app(tmp_path)
    unknown = "0" * 32
    for method, url in (("get", f"/easel/v1/jobs/{unknown}"), ("delete", f"/easel/v1/jobs/{unknown}"),
                        ("get", f"/easel/v1/jobs/{unknown}/images/0")):
        response = getattr(client, method)(url)
        assert response.status_code == 404 and unknown in response.json()["detail"], (method, url)

    def refused(body: dict, words: str) -> None:
        response = client.post("/easel/v1/jobs", json=body)
        assert response.status_code == 422, response.text
        assert words in json.dumps(response.json()) and "Traceback" not in response.text

    refused({"task": "paint", "request": {}}, "txt2img")
    refused({"task": "txt2img", "request": {**TINY, "width": 65}}, "multiple of 8")
    refused({"task": "txt2img", "request": {**TINY, "steps": "many"}}, "steps")
    refused({"task": "img2img", "request": TINY}, "needs an initial image")
    refused({"task": "img2img", "request": {**TINY, "init_image": "not base64!"}}, "not valid base64")
    refused({"task": "img2img", "request": {**TINY, "init_image": base64.b64encode(b"text").decode()}},
            "not an image")
    refused({"task": "txt2img", "request": TINY, "webhook": "file:///etc/passwd"}, "http:// or https://")
    assert client.get("/easel/v1/jobs").json() == {"jobs": []}  # nothing refused was recorded


def test_the_image_route_serves_only_files_inside_the_outputs_folder(tmp_path):
    context, client = make_app(tmp_path)
    outputs = tmp_path / "outputs"
    (outputs / "txt2img").mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(outputs / "txt2img" / "inside.png")
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8), "blue").save(secret)
    (outputs / "txt2img" / "link.png").symlink_to(secret)
    # A record whose image paths were tampered with (the database is a file anyone with the data folder can edit).
    paths = ["txt2img/inside.png", "../secret.png", str(secret), "txt2img/link.png", "txt2img/../../secret.png"]
    context.job_recorder().store.add(JobRecord(id="tampered", task="txt2img", request={}, status="finished",
                                               images=paths))
    assert client.get("/easel/v1/jobs/tampered/images/0").status_code == 200
    for index in range(1, len(paths)):
        response = client.get(f"/easel/v1/jobs/tampered/images/{index}")
        assert response.status_code == 404 and "secret" not in response.text, paths[index]
    for url in ("/easel/v1/jobs/tampered/images/..%2F..%2Fsecret.png", "/easel/v1/jobs/tampered/images/-1",
                "/easel/v1/jobs/tampered/images/5"):
        assert client.get(url).status_code in (404, 422), url


def test_queued_jobs_run_after_a_restart_in_their_order_and_finished_ones_stay_listed(tmp_path):
    hold = DeviceHold()
    first_context, first_client = make_app(tmp_path, extra_plugins={"hold": hold})
    accepted = [submit(first_client, f"job {n}", seed=100 + n) for n in range(3)]
    assert [job["position"] for job in accepted] == [1, 2, 3]
    first_context.close()  # the server stops while the device is still held: none of them ran

    second_context, client = make_app(tmp_path)  # a new process over the same folders, nothing holds the device
    ended = [wait_until_ended(client, job["id"]) for job in accepted]
    assert [job["status"] for job in ended] == ["finished"] * 3, ended
    assert [job["seeds"] for job in ended] == [[100], [101], [102]]
    assert ended[0]["started"] < ended[1]["started"] < ended[2]["started"]  # in the order they were submitted
    for job in ended:
        assert png_pixels(client.get(job["images"][0]).content).shape == (64, 64, 3)
    second_context.close()

    third_context, client = make_app(tmp_path)  # after another restart the finished jobs are still there
    listed = client.get("/easel/v1/jobs").json()["jobs"]
    assert [job["id"] for job in listed] == [job["id"] for job in reversed(accepted)]  # newest first
    assert all(job["status"] == "finished" and len(job["images"]) == 1 for job in listed)
    assert client.get(listed[0]["images"][0]).status_code == 200
    assert third_context.queue.snapshot()["waiting"] == []  # nothing ran twice


class _WebhookReceiver(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers["Content-Type"], json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook_server():
    received: list = []
    handler = type("Receiver", (_WebhookReceiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", received
    server.shutdown()
    server.server_close()


def test_a_webhook_receives_the_final_record_and_a_dead_one_breaks_nothing(tmp_path, webhook_server):
    url, received = webhook_server
    context, client = make_app(tmp_path)
    called = submit(client, "hooked", seed=7, webhook=f"{url}/done?token=abc")
    dead = submit(client, "hooked", seed=8, webhook=f"http://127.0.0.1:{free_port()}/nobody")
    job = wait_until_ended(client, called["id"])
    assert wait_until_ended(client, dead["id"])["status"] == "finished"  # the unreachable webhook broke nothing
    context.job_recorder().wait_for_webhooks(timeout=30)
    assert len(received) == 1
    path, content_type, record = received[0]
    assert path == "/done?token=abc" and content_type == "application/json"
    assert record["id"] == called["id"] and record["status"] == "finished" and record["seeds"] == [7]
    assert record["image_urls"] == job["images"] and record["infotexts"] == job["infotexts"]


# ----- the background extension's routes and job task ------------------------------------

def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_background_detect_and_mask_routes_work_as_the_tab_does(tmp_path):
    from test_background_engine import scene

    context, client = make_app(tmp_path)
    image, truth = scene()
    found = client.post("/easel/v1/background/detect", json={
        "image": b64_png(image), "subject_prompt": "the square", "detector": "tiny-grounding-dino",
        "box_threshold": 0.0, "text_threshold": 0.0, "work_side": 64})
    assert found.status_code == 200, found.text
    body = found.json()
    assert (body["width"], body["height"]) == (128, 96) and body["detections"]
    assert all(0 <= d["box"][0] <= d["box"][2] <= 128 and 0 <= d["box"][1] <= d["box"][3] <= 96
               for d in body["detections"])

    made = client.post("/easel/v1/background/mask", json={
        "image": b64_png(image), "boxes": [[34, 18, 102, 78]], "segmenter": "grabcut", "work_side": 96})
    assert made.status_code == 200, made.text
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(made.json()["mask"])))) >= 128
    assert mask.shape == truth.shape and (mask & truth).sum() / (mask | truth).sum() > 0.8  # GrabCut found the square
    assert abs(made.json()["coverage"] - mask.mean()) < 1e-6

    for url, body in (("/easel/v1/background/detect", {"image": "eA==", "subject_prompt": "x"}),
                      ("/easel/v1/background/mask", {"image": b64_png(image), "boxes": []}),
                      ("/easel/v1/background/detect", {"image": b64_png(image), "subject_prompt": " "})):
        response = client.post(url, json=body)
        assert response.status_code == 422 and "Traceback" not in response.text, (url, response.text)
    assert "/easel/v1/background/mask" in client.get("/openapi.json").json()["paths"]  # the extension's routes


def test_a_background_job_survives_a_restart_and_keeps_the_subject_pixel_identical(tmp_path):
    from test_background_engine import scene

    image, truth = scene()
    request = {"image": b64_png(image), "mask": b64_png(Image.fromarray(truth.astype(np.uint8) * 255)),
               "background_prompt": "a sunny beach", "model": "tiny", "steps": 3, "cfg_scale": 5.0, "seed": 11,
               "erode": 3, "feather": 4, "work_side": 128}
    hold = DeviceHold()
    first_context, first_client = make_app(tmp_path, extra_plugins={"hold": hold})
    accepted = first_client.post("/easel/v1/jobs", json={"task": "background", "request": request})
    assert accepted.status_code == 202, accepted.text
    job_id = accepted.json()["id"]
    wait_for(lambda: first_client.get(f"/easel/v1/jobs/{job_id}").json()["status"] == "queued"
             and first_context.queue.snapshot()["waiting"] == [job_id], "its inpainting to wait in the queue")
    first_context.close()

    second_context, client = make_app(tmp_path)
    job = wait_until_ended(client, job_id)
    assert job["status"] == "finished" and job["task"] == "background", job
    assert len(job["images"]) == 2 and "Seed: 11" in job["infotexts"][0] and "a sunny beach" in job["infotexts"][0]
    result = png_pixels(client.get(job["images"][0]).content)
    saved_mask = np.asarray(Image.open(io.BytesIO(client.get(job["images"][1]).content))) >= 128
    source = np.asarray(image)
    from extensions.background import masks

    core = masks.grow(truth, -3)
    assert result.shape == source.shape and np.array_equal(result[core], source[core])  # the subject is untouched
    background = ~masks.grow(truth, 2)
    assert (np.abs(result[background].astype(int) - source[background].astype(int)).sum(axis=1) > 10).mean() > 0.9
    assert np.array_equal(saved_mask, truth)

    refused = client.post("/easel/v1/jobs", json={"task": "background", "request": {"image": b64_png(image)}})
    assert refused.status_code == 422 and "subject_prompt" in refused.json()["detail"]


# ----- the train extension's routes --------------------------------------------------------

TRAIN_CONFIG = dict(model="tiny", resolution=64, rank=4, alpha=4, learning_rate=1e-3, max_steps=4, checkpoint_every=2,
                    keep_checkpoints=2, seed=7)


@pytest.mark.slow  # two trainer processes: minutes on a busy 2-core machine
def test_training_routes_start_follow_cancel_resume_and_list_a_run(tmp_path, train_hold):
    from test_training import make_images

    context, client = make_app(tmp_path)
    make_images(context.datasets_dir / "subject", count=2)
    runs = "/easel/v1/training/runs"
    for body, words in (({"dataset": "../../etc", "name": "x", "config": TRAIN_CONFIG}, "dataset"),
                        ({"dataset": "subject", "name": "x", "config": {"bogus": 1}}, "bogus"),
                        ({"dataset": "subject", "name": "x", "config": {"run_dir": "/tmp"}}, "run_dir"),
                        ({"dataset": "subject", "name": "a/b", "config": TRAIN_CONFIG}, "plain file name"),
                        ({"dataset": "subject", "name": "x", "config": {**TRAIN_CONFIG, "rank": "four"}}, "rank")):
        refused = client.post(runs, json=body)
        assert refused.status_code == 422 and words in refused.json()["detail"], (body, refused.text)
    assert client.get(f"{runs}/nothing").status_code == 404
    assert client.get(f"{runs}/..%2F..%2Fetc").status_code == 404

    train_hold.write_text("2")  # the trainer waits after step 2 until the file goes or the run is cancelled
    started = client.post(runs, json={"dataset": "subject", "name": "api_lora", "config": TRAIN_CONFIG})
    assert started.status_code == 202, started.text
    wait_for(lambda: client.get(f"{runs}/api_lora").json()["step"] == 2, "step 2")
    run = client.get(f"{runs}/api_lora").json()
    assert run["running"] and run["status"] == "running" and run["total"] == 4
    assert [step for step, _ in run["losses"]] == [1, 2] and all(np.isfinite(loss) for _, loss in run["losses"])
    busy = client.post(runs, json={"dataset": "subject", "name": "other", "config": TRAIN_CONFIG})
    assert busy.status_code == 409 and "api_lora" in busy.json()["detail"]  # one run at a time

    assert client.post(f"{runs}/api_lora/cancel").status_code == 202
    wait_for(lambda: not client.get(f"{runs}/api_lora").json()["running"], "the run to stop")
    run = client.get(f"{runs}/api_lora").json()
    assert run["status"] == "cancelled" and run["step"] == 2 and run["checkpoint"], run
    assert client.post(f"{runs}/api_lora/cancel").status_code == 409  # not training any more

    train_hold.unlink()
    assert client.post(f"{runs}/api_lora/resume", json={"config": {"max_steps": 5}}).status_code == 202
    wait_for(lambda: client.get(f"{runs}/api_lora").json()["status"] in ("done", "failed"), "the resumed run to end")
    run = client.get(f"{runs}/api_lora").json()
    assert run["status"] == "done" and [step for step, _ in run["losses"]] == [3, 4, 5], run  # went on from step 2
    assert (context.lora_dir / "api_lora.safetensors").is_file()
    listed = client.get(runs).json()["runs"]
    assert [(item["name"], item["status"]) for item in listed] == [("api_lora", "done")]


def test_an_unreadable_job_store_does_not_keep_the_app_from_starting(tmp_path, caplog):
    (tmp_path / "data").mkdir(parents=True)
    (tmp_path / "data" / STORE_FILE).write_bytes(b"this is not a database" * 100)
    context, client = make_app(tmp_path)  # starts, and says why the old jobs were not queued again
    assert "Could not queue again the jobs" in caplog.text
    assert context.queue.snapshot()["waiting"] == []
