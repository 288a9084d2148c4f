"""AUTOMATIC1111's REST API on a real Easel server (``--api``) with the tiny models.

Checked against A1111 1.10's shapes (``tests/data/a1111_api_1.10.json``, written from its
``modules/api/models.py``), with a real client library used unchanged (``webuiapi``), and
judged on pixels where an image is made: the seed reproduces the image, inpainting keeps
the unmasked pixels, PNG Info reads back what was written.
"""

from __future__ import annotations

import base64
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from conftest import make_options, start_server

REFERENCE = json.loads((Path(__file__).parent / "data" / "a1111_api_1.10.json").read_text())
USER, PASSWORD = "alice", "s3cret pass:word"
TINY = dict(width=64, height=64, steps=3, sampler_name="Euler")


@pytest.fixture(scope="module")
def api_server(tmp_path_factory):
    """A real server with the UI and ``--api --api-auth alice:...`` on the tiny model."""
    from webui.rest import ApiOptions

    base = tmp_path_factory.mktemp("sdapi")
    options = make_options(base, model="tiny")
    context, blocks, url = start_server(options, api=ApiOptions(credentials=[(USER, PASSWORD)],
                                                               max_body_bytes=4 * 1024 * 1024,
                                                               cmd_flags={"api": True, "api_auth": "(set)"}))
    session = requests.Session()
    session.auth = (USER, PASSWORD)
    try:
        yield {"url": url.rstrip("/"), "context": context, "session": session, "base": base}
    finally:
        blocks.close()


def api(server, path: str) -> str:
    return f"{server['url']}/sdapi/v1/{path}"


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def assert_a1111_error(response, status: int) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(REFERENCE["response_fields"]["error"]) <= set(body)
    assert "Traceback" not in response.text and 'File "' not in response.text
    return body


# --- shapes ----------------------------------------------------------------------------


def test_request_models_have_a1111_fields_types_and_defaults():
    from webui.rest.sdapi_models import Img2ImgRequest, Txt2ImgRequest

    for model, key in ((Txt2ImgRequest, "txt2img_request_defaults"), (Img2ImgRequest, "img2img_request_defaults")):
        reference = REFERENCE[key]
        defaults = model().model_dump()
        assert set(defaults) == set(reference), set(defaults) ^ set(reference)
        for name, value in reference.items():
            assert defaults[name] == value, (key, name, defaults[name], value)
        # every field may be null (null = the default) and unknown keys are ignored
        nulls = model.model_validate({name: None for name in reference} | {"url": "x", "clip_skip": 2})
        assert nulls.model_dump() == defaults


def test_every_a1111_route_is_served_and_documented(api_server):
    schema = api_server["session"].get(f"{api_server['url']}/openapi.json").json()
    served = {(method.upper(), path) for path, item in schema["paths"].items() for method in item}
    missing = [tuple(route) for route in REFERENCE["routes"] if tuple(route) not in served]
    assert not missing


def test_listings_have_a1111_shapes(api_server):
    session, fields = api_server["session"], REFERENCE["response_fields"]
    models = session.get(api(api_server, "sd-models")).json()
    assert "tiny" in [item["model_name"] for item in models]
    for item in models:
        assert list(item) == fields["sd-models"]
    samplers = session.get(api(api_server, "samplers")).json()
    assert "Euler a" in [s["name"] for s in samplers] and all(list(s) == fields["samplers"] for s in samplers)
    assert "k_euler_a" in next(s for s in samplers if s["name"] == "Euler a")["aliases"]
    schedulers = session.get(api(api_server, "schedulers")).json()
    assert {"automatic", "karras"} <= {s["name"] for s in schedulers}
    assert all(list(s) == fields["schedulers"] for s in schedulers)
    assert list(session.get(api(api_server, "memory")).json()) == fields["memory"]
    assert session.get(api(api_server, "scripts")).json() == {"txt2img": [], "img2img": []}
    assert list(session.get(api(api_server, "embeddings")).json()) == fields["embeddings"]
    for empty in ("upscalers", "latent-upscale-modes", "prompt-styles", "face-restorers", "sd-vae"):
        assert session.get(api(api_server, empty)).json() == []
    assert session.get(api(api_server, "cmd-flags")).json()["api_auth"] == "(set)"
    for refresh in ("refresh-checkpoints", "refresh-loras"):
        assert session.post(api(api_server, refresh)).status_code == 200


def test_loras_listed_with_metadata(api_server):
    from safetensors.torch import save_file
    import torch

    folder = api_server["base"] / "models" / "Lora"
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"w": torch.zeros(2)}, str(folder / "shapes_style.safetensors"), metadata={"ss_output_name": "shapes"})
    (folder / "evil.ckpt").write_bytes(b"pickle")
    loras = api_server["session"].get(api(api_server, "loras")).json()
    assert [item["name"] for item in loras] == ["shapes_style"]
    assert list(loras[0]) == REFERENCE["response_fields"]["loras"]
    assert loras[0]["metadata"] == {"ss_output_name": "shapes"}


# --- generating ------------------------------------------------------------------------


def test_txt2img_answers_a1111_shape_and_reproduces_by_seed(api_server):
    session = api_server["session"]
    body = {**TINY, "prompt": "a red circle", "seed": 1234, "batch_size": 2, "styles": ["x"], "enable_hr": True,
            "restore_faces": True, "sampler_index": None, "scheduler": "automatic", "some_client_key": {"a": 1}}
    first = session.post(api(api_server, "txt2img"), json=body)
    assert first.status_code == 200, first.text
    answer = first.json()
    assert list(answer) == REFERENCE["response_fields"]["txt2img"]
    info = json.loads(answer["info"])
    assert set(REFERENCE["response_fields"]["info"]) <= set(info)
    assert info["all_seeds"] == [1234, 1235] and info["seed"] == 1234
    assert info["sd_model_name"] == "tiny" and len(info["sd_model_hash"]) == 10
    assert {"styles", "enable_hr", "restore_faces"} <= set(info["not_applied"])
    # parameters echo the request with every default filled in
    assert answer["parameters"]["steps"] == 3 and answer["parameters"]["cfg_scale"] == 7.0
    assert answer["parameters"]["hr_scale"] == 2.0 and answer["parameters"]["sampler_index"] == "Euler"
    images = [decode(b64) for b64 in answer["images"]]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert images[0].text["parameters"] == info["infotexts"][0]
    assert "Seed: 1234" in info["infotexts"][0] and "Seed: 1235" in info["infotexts"][1]
    assert not list((api_server["base"] / "outputs").rglob("*.png")), "save_images defaults to false"
    again = session.post(api(api_server, "txt2img"), json={**body, "save_images": True}).json()
    for b64, image in zip(again["images"], images):
        assert np.array_equal(np.asarray(decode(b64).convert("RGB")), np.asarray(image.convert("RGB")))
    assert len(list((api_server["base"] / "outputs").rglob("*.png"))) == 2, "save_images: true saves"
    same = decode(again["images"][0])
    other = session.post(api(api_server, "txt2img"), json={**body, "batch_size": 1, "seed": 99}).json()
    assert not np.array_equal(np.asarray(decode(other["images"][0]).convert("RGB")), np.asarray(same.convert("RGB")))
    quiet = session.post(api(api_server, "txt2img"), json={**body, "batch_size": 1, "send_images": False}).json()
    assert quiet["images"] == []


def test_inpaint_keeps_unmasked_pixels_and_accepts_data_urls(api_server):
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    init.paste((30, 30, 200), (32, 0, 64, 64))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 24, 64))
    body = {**TINY, "prompt": "green", "seed": 7, "init_images": ["data:image/png;base64," + b64_png(init)],
            "mask": b64_png(mask), "mask_blur": 0, "denoising_strength": 1.0, "inpaint_full_res": False,
            "steps": 4}
    answer = api_server["session"].post(api(api_server, "img2img"), json=body)
    assert answer.status_code == 200, answer.text
    out = np.asarray(decode(answer.json()["images"][0]).convert("RGB")).astype(int)
    kept = np.asarray(init).astype(int)[:, 32:]
    assert np.abs(out[:, 32:] - kept).max() <= 2, "pixels outside the mask must be the original ones"
    assert np.abs(out[:, :16] - np.asarray(init).astype(int)[:, :16]).mean() > 20, "the masked part was repainted"
    info = json.loads(answer.json()["info"])
    assert "Mask blur: 0" in info["infotexts"][0] and info["denoising_strength"] == 1.0
    assert answer.json()["parameters"]["init_images"] is None  # include_init_images is false


def test_override_checkpoint_is_for_that_job_only_and_options_switch_models(api_server):
    session = api_server["session"]
    options = session.get(api(api_server, "options")).json()
    assert options["sd_model_checkpoint"].startswith("tiny")
    answer = session.post(api(api_server, "txt2img"), json={
        **TINY, "seed": 1, "override_settings": {"sd_model_checkpoint": "easel-shapes", "CLIP_stop_at_last_layers": 2}})
    info = json.loads(answer.json()["info"])
    assert info["sd_model_name"] == "easel-shapes"
    assert "override_settings.CLIP_stop_at_last_layers" in info["not_applied"]
    assert session.get(api(api_server, "options")).json()["sd_model_checkpoint"].startswith("tiny")
    # a client posts back the whole dict it got: nothing changes, nothing fails
    assert session.post(api(api_server, "options"), json=options).status_code == 200
    assert session.get(api(api_server, "options")).json() == options
    assert session.post(api(api_server, "options"), json={"sd_model_checkpoint": "easel-shapes"}).status_code == 200
    try:
        info = json.loads(session.post(api(api_server, "txt2img"), json={**TINY, "seed": 1}).json()["info"])
        assert info["sd_model_name"] == "easel-shapes"
        assert_a1111_error(session.post(api(api_server, "options"), json={"sd_model_checkpoint": "nope [0123]"}), 404)
        assert_a1111_error(session.post(api(api_server, "options"), json={"queue.limit": "many"}), 422)
    finally:
        session.post(api(api_server, "options"), json={"sd_model_checkpoint": "tiny"})


def test_png_info_reads_back_parameters(api_server):
    session = api_server["session"]
    answer = session.post(api(api_server, "txt2img"), json={**TINY, "prompt": "a (blue:1.2) square",
                                                            "negative_prompt": "red", "seed": 5}).json()
    info = session.post(api(api_server, "png-info"), json={"image": answer["images"][0]}).json()
    assert list(info) == REFERENCE["response_fields"]["png-info"]
    assert info["info"] == json.loads(answer["info"])["infotexts"][0]
    assert info["parameters"]["Prompt"] == "a (blue:1.2) square"
    assert info["parameters"]["Negative prompt"] == "red"
    assert info["parameters"]["Seed"] == "5" and info["parameters"]["Size-1"] == "64"


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize("body, status, needle", [
    ({"width": 100}, 422, "multiple of 8"),
    ({"width": 100000}, 422, "width must be between"),
    ({"steps": "many"}, 422, "steps"),
    ({"sampler_name": "Nonexistent sampler"}, 404, "Nonexistent"),
    ({"prompt": "a <lora:no_such_lora:0.8> cat"}, 404, "no_such_lora"),
    ({"override_settings": {"sd_model_checkpoint": "missing-model"}}, 404, "missing-model"),
])
def test_bad_requests_get_honest_status_codes(api_server, body, status, needle):
    response = api_server["session"].post(api(api_server, "txt2img"), json={**TINY, **body})
    assert_a1111_error(response, status)
    assert needle in response.text


def test_bad_images_and_oversize_bodies(api_server):
    session = api_server["session"]
    for images, status in ((["not base64 at all!"], 422), ([base64.b64encode(b"GIF89a broken").decode()], 422),
                           ([b64_png(Image.new("RGB", (4200, 16)))], 422), ([], 422)):
        assert_a1111_error(session.post(api(api_server, "img2img"), json={**TINY, "init_images": images}), status)
    huge = "A" * (5 * 1024 * 1024)
    assert_a1111_error(session.post(api(api_server, "png-info"), json={"image": huge}), 413)
    assert_a1111_error(session.post(api(api_server, "txt2img"), data=b"{not json", headers={
        "content-type": "application/json"}), 422)
    assert session.get(api(api_server, "progress")).status_code == 200  # still serving


# --- authentication ----------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [("GET", "options"), ("GET", "sd-models"), ("GET", "loras"),
                                          ("POST", "refresh-loras"), ("GET", "progress"), ("POST", "interrupt"),
                                          ("POST", "txt2img"), ("POST", "png-info"), ("GET", "/easel/v1/jobs"),
                                          ("GET", "/easel/v1/training/runs"),
                                          ("POST", "/easel/v1/background/detect")])
def test_every_route_family_needs_the_right_credentials(api_server, method, path):
    url = api_server["url"] + path if path.startswith("/") else api(api_server, path)
    image = b64_png(Image.new("RGB", (64, 64), (200, 30, 30)))
    body = {"image": image} if path == "png-info" else (
        {**TINY, "seed": 3} if path == "txt2img" else
        {"image": image, "subject_prompt": "the red square", "detector": "shapes-demo"} if path.endswith("detect") else None)
    for auth in (None, (USER, "wrong"), ("bob", PASSWORD), (USER, PASSWORD[:-1])):
        response = requests.request(method, url, json=body, auth=auth, timeout=60)
        assert_a1111_error(response, 401)
        assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert requests.request(method, url, json=body, auth=(USER, PASSWORD), timeout=120).status_code == 200


def test_open_api_ignores_an_empty_basic_header(make_context):
    from fastapi.testclient import TestClient

    from webui.rest import ApiOptions, create_api_app

    client = TestClient(create_api_app(make_context(model="tiny"), ApiOptions()))
    assert client.get("/sdapi/v1/options", headers={"Authorization": "Basic "}).status_code == 200
    assert client.get("/sdapi/v1/options").status_code == 200


def test_credentials_from_flags_and_files(tmp_path):
    from webui.rest.auth import BasicAuth, CredentialsError, read_credentials

    path = tmp_path / "auth.txt"
    path.write_text("carol:pw:with:colons\ndave:x, erin:y\n")
    pairs = read_credentials("alice:a", path, "api-auth")
    assert pairs == [("alice", "a"), ("carol", "pw:with:colons"), ("dave", "x"), ("erin", "y")]
    auth = BasicAuth(tuple(pairs))
    assert auth.check("carol", "pw:with:colons") and not auth.check("carol", "pw") and not auth.check("x", "a")
    with pytest.raises(CredentialsError):
        read_credentials("nopassword", None, "api-auth")
    with pytest.raises(CredentialsError):
        read_credentials(None, tmp_path / "missing", "api-auth")


# --- a real client, unchanged ------------------------------------------------------------


def test_webuiapi_client_works_unchanged(api_server):
    import webuiapi

    host, port = api_server["url"].removeprefix("http://").split(":")
    client = webuiapi.WebUIApi(host=host, port=int(port), sampler="Euler a", steps=3,
                               username=USER, password=PASSWORD)
    result = client.txt2img(prompt="a red circle", width=64, height=64, seed=42, cfg_scale=5)
    assert result.image.size == (64, 64) and result.info["seed"] == 42
    init = result.image
    edited = client.img2img(images=[init], prompt="a blue circle", width=64, height=64, seed=42,
                            denoising_strength=0.5, steps=4)
    assert edited.image.size == (64, 64)
    assert "Denoising strength: 0.5" in edited.info["infotexts"][0]
    assert client.png_info(result.image).info == result.info["infotexts"][0]
    client.util_set_model("easel-shapes")
    try:
        assert client.util_get_current_model().startswith("easel-shapes")
        demo = client.txt2img(prompt="a large red circle on a blue background", width=64, height=64, seed=1)
        assert demo.info["sd_model_name"] == "easel-shapes"
    finally:
        client.util_set_model("tiny")
    assert client.get_progress()["state"]["job_count"] == 0
    client.interrupt()
    assert "Euler a" in client.util_get_sampler_names()


# --- the queue under load, progress while a job runs --------------------------------------


def test_sixteen_concurrent_requests_with_a_queue_of_eight(api_server):
    session, context = api_server["session"], api_server["context"]
    previous = session.get(api(api_server, "options")).json()["queue.limit"]
    assert session.post(api(api_server, "options"), json={"queue.limit": 8}).status_code == 200
    outcomes: dict[int, tuple[int, float, dict]] = {}

    def send(index: int) -> None:
        response = requests.post(api(api_server, "txt2img"), auth=(USER, PASSWORD), timeout=600,
                                 json={**TINY, "steps": 6, "seed": 1000 + index})
        outcomes[index] = (response.status_code, time.monotonic(), {**response.json(),
                                                                    "retry_after": response.headers.get("Retry-After")})

    threads = []
    try:
        for index in range(16):
            thread = threading.Thread(target=send, args=(index,))
            thread.start()
            threads.append(thread)
            time.sleep(0.03)  # a definite submission order
        for thread in threads:
            thread.join(600)
    finally:
        session.post(api(api_server, "options"), json={"queue.limit": previous})
    assert sorted(outcomes) == list(range(16)), "every request was answered"
    statuses = [outcomes[i][0] for i in range(16)]
    assert set(statuses) <= {200, 503} and statuses.count(503) >= 1 and statuses.count(200) >= 9, statuses
    for index in range(16):
        status, _, body = outcomes[index]
        if status == 503:
            assert body["error"] == "QueueFullError" and int(body["retry_after"]) > 0
        else:
            assert json.loads(body["info"])["seed"] == 1000 + index, "each answer is its own job's"
    accepted = [i for i in range(16) if statuses[i] == 200]
    finished_order = sorted(accepted, key=lambda i: outcomes[i][1])
    assert finished_order == accepted, "accepted jobs ran in the order they were submitted"
    assert session.get(api(api_server, "progress")).json()["state"]["job_count"] == 0
    assert context.job_queue().snapshot()["waiting"] == []


def test_progress_answers_fast_during_a_long_job_and_interrupt_stops_it(api_server):
    session = api_server["session"]
    result: dict = {}

    def long_job() -> None:
        result["response"] = requests.post(api(api_server, "txt2img"), auth=(USER, PASSWORD), timeout=600,
                                           json={**TINY, "steps": 200, "seed": 11})

    worker = threading.Thread(target=long_job)
    worker.start()
    latencies, steps, previews = [], [], 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        started = time.monotonic()
        answer = session.get(api(api_server, "progress"), timeout=5).json()
        latencies.append(time.monotonic() - started)
        state = answer["state"]
        if state["sampling_steps"] == 200:
            steps.append(state["sampling_step"])
            previews += answer["current_image"] is not None
            assert list(answer) == REFERENCE["response_fields"]["progress"]
            assert set(REFERENCE["response_fields"]["progress_state"]) <= set(state)
        if len(steps) >= 15 and steps[-1] >= 30:
            break
        time.sleep(0.1)
    assert session.post(api(api_server, "interrupt")).status_code == 200
    interrupted_at = steps[-1]
    worker.join(120)
    assert len(latencies) >= 15 and max(latencies) < 0.2, f"slowest progress answer {max(latencies):.3f}s"
    assert steps == sorted(steps) and steps[-1] > steps[0], "progress moved forward"
    assert previews > 0, "current_image carries the preview"
    info = json.loads(result["response"].json()["info"])
    assert info["interrupted"] is True
    assert "Steps: 200" in info["infotexts"][0] if info["infotexts"] else True
    final = session.get(api(api_server, "progress")).json()
    assert final["progress"] == 0.0 and interrupted_at < 200


# --- files -------------------------------------------------------------------------------


def test_only_outputs_are_served_whatever_the_url_encoding(api_server):
    from urllib.parse import quote

    base = api_server["base"]
    secret = base / "data" / "secret.txt"
    secret.write_text("do not serve me")
    answer = api_server["session"].post(api(api_server, "txt2img"), json={**TINY, "seed": 8, "save_images": True})
    assert answer.status_code == 200
    saved = sorted((base / "outputs").rglob("*.png"))[-1]
    served = requests.get(f"{api_server['url']}/gradio_api/file={saved}", timeout=30)
    assert served.status_code == 200 and served.content == saved.read_bytes()
    outputs = base / "outputs"
    tries = [str(secret), f"{outputs}/../data/secret.txt", quote(f"{outputs}/../data/secret.txt", safe=""),
             f"{outputs}/%2e%2e/data/secret.txt", f"{outputs}/%252e%252e/data/secret.txt",
             f"{outputs}/..%2fdata%2fsecret.txt", f"{outputs}/..%5cdata%5csecret.txt", "/etc/passwd",
             quote("/etc/passwd", safe=""), f"{outputs}/../../../../etc/passwd"]
    for attempt in tries:
        for prefix in ("/gradio_api/file=", "/file=", "/gradio_api/file/", "/sdapi/v1/../../gradio_api/file="):
            response = requests.get(api_server["url"] + prefix + attempt, timeout=30)
            assert "do not serve me" not in response.text and "root:" not in response.text, (prefix, attempt)
            assert response.status_code != 200 or response.headers.get("content-type", "").startswith("text/html"), \
                (prefix, attempt, response.status_code)


def test_serving_beyond_this_machine_without_credentials_warns_loudly():
    from types import SimpleNamespace

    from webui.rest import ApiOptions
    from webui.server import exposure_warnings

    local = SimpleNamespace(listen=False, share=False, nowebui=False)
    assert exposure_warnings(local, None, ApiOptions()) == []
    lan = SimpleNamespace(listen=True, share=False, nowebui=False)
    warnings = exposure_warnings(lan, None, ApiOptions())
    assert len(warnings) == 2 and all(w.startswith("!!!") for w in warnings)
    assert "--gradio-auth" in warnings[0] and "--api-auth" in warnings[1]
    assert exposure_warnings(lan, [("a", "b")], ApiOptions(credentials=[("a", "b")])) == []
    shared = SimpleNamespace(listen=False, share=True, nowebui=False)
    assert "share link" in exposure_warnings(shared, [("a", "b")], ApiOptions())[0]
