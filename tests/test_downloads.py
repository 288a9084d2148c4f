"""Model downloads from a local HTTP server: progress, SHA-256, resume after a cut connection,
and the refusals (pickle files, loopback URLs while listening, no login while listening, a
checksum that does not match, plain http, the hub while offline)."""

from __future__ import annotations

import hashlib
import os

import pytest

from tests.model_server import ModelServer
from webui.models_store import OriginRecord
from webui.pipelines.downloads import DownloadError, DownloadPolicy, download_hub, download_url

LOCAL = DownloadPolicy(allow_http=True)  # a server on localhost only, as in the default start
PAYLOAD = os.urandom(300_000) + b"end"
SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    files = {"/m/model.safetensors": PAYLOAD, "/m/lora.safetensors": PAYLOAD[:1000], "/m/model.ckpt": PAYLOAD,
             "/m/page": b"<html>not a model</html>"}
    running = ModelServer(files).start()
    yield running
    running.stop()


def test_download_reports_progress_and_the_sha256(server, tmp_path):
    seen = []
    origins = OriginRecord(tmp_path / "data" / "model_origins.json", tmp_path / "models")
    result = download_url(server.url + "/m/model.safetensors", "checkpoint", tmp_path / "models", policy=LOCAL,
                          progress=seen.append, chunk_size=16_384, origins=origins)
    target = tmp_path / "models" / "Stable-diffusion" / "model.safetensors"
    assert result.path == target and target.read_bytes() == PAYLOAD
    assert result.sha256 == SHA and result.size_bytes == len(PAYLOAD) and result.resumed_bytes == 0
    assert not list(target.parent.glob("*.part"))
    done = [p.done_bytes for p in seen]
    assert len(seen) >= len(PAYLOAD) // 16_384 and done == sorted(done) and done[-1] == len(PAYLOAD)
    assert all(p.total_bytes == len(PAYLOAD) for p in seen) and seen[-1].fraction == 1.0
    origin = origins.get(target)
    assert origin.source == "url" and origin.location.endswith("/m/model.safetensors") and origin.sha256 == SHA


def test_kind_picks_the_folder_and_content_disposition_names_the_file(server, tmp_path):
    lora = download_url(server.url + "/download/m/lora.safetensors", "lora", tmp_path / "models", policy=LOCAL)
    assert lora.path == tmp_path / "models" / "Lora" / "lora.safetensors"
    assert lora.sha256 == hashlib.sha256(PAYLOAD[:1000]).hexdigest()
    vae = download_url(server.url + "/m/lora.safetensors", "vae", tmp_path / "models", policy=LOCAL,
                       filename="my-vae.safetensors")
    assert vae.path == tmp_path / "models" / "VAE" / "my-vae.safetensors"
    with pytest.raises(DownloadError, match="already in"):
        download_url(server.url + "/m/lora.safetensors", "vae", tmp_path / "models", policy=LOCAL,
                     filename="my-vae.safetensors")
    with pytest.raises(DownloadError, match="names no file"):
        download_url(server.url + "/m/page", "lora", tmp_path / "models", policy=LOCAL)
    with pytest.raises(DownloadError, match="plain file name"):
        download_url(server.url + "/m/lora.safetensors", "vae", tmp_path / "models", policy=LOCAL,
                     filename="../escape.safetensors")


def test_a_cut_connection_resumes_with_a_range_request_to_the_right_hash(server, tmp_path):
    path = "/m/model.safetensors"
    server.cut_after[path], server.cuts_left[path] = 100_000, 1
    with pytest.raises(DownloadError, match="connection was lost"):
        download_url(server.url + path, "checkpoint", tmp_path / "models", policy=LOCAL, retries=0)
    part = tmp_path / "models" / "Stable-diffusion" / "model.safetensors.part"
    assert part.stat().st_size == 100_000
    assert not (tmp_path / "models" / "Stable-diffusion" / "model.safetensors").exists()

    seen = []
    result = download_url(server.url + path, "checkpoint", tmp_path / "models", policy=LOCAL, retries=0,
                          progress=seen.append)
    assert server.requests[-1] == (path, "bytes=100000-")
    assert result.sha256 == SHA and result.resumed_bytes == 100_000 and result.path.read_bytes() == PAYLOAD
    assert seen[0].done_bytes > 100_000 and not part.exists()


def test_a_lost_connection_is_resumed_at_once_within_the_retries(server, tmp_path):
    path = "/m/model.safetensors"
    server.cut_after[path], server.cuts_left[path] = 50_000, 2
    result = download_url(server.url + path, "checkpoint", tmp_path / "models", policy=LOCAL, retries=2)
    assert result.sha256 == SHA
    assert [r for _, r in server.requests] == [None, "bytes=50000-", "bytes=100000-"]


def test_pickle_files_are_refused_without_allow_pickle(server, tmp_path):
    with pytest.raises(DownloadError, match="pickle"):
        download_url(server.url + "/m/model.ckpt", "checkpoint", tmp_path / "models", policy=LOCAL)
    assert server.requests == [] and not (tmp_path / "models").exists()
    with pytest.raises(DownloadError, match="pickle"):  # named by the server: refused before writing
        download_url(server.url + "/download/m/model.ckpt", "checkpoint", tmp_path / "models", policy=LOCAL)
    assert not list((tmp_path / "models").rglob("*"))
    allowed = DownloadPolicy(allow_http=True, allow_pickle=True)
    result = download_url(server.url + "/m/model.ckpt", "checkpoint", tmp_path / "models", policy=allowed)
    assert result.path.name == "model.ckpt" and result.sha256 == SHA


def test_listening_server_refuses_loopback_urls_and_downloads_without_login(server, tmp_path):
    models = tmp_path / "models"
    listening = DownloadPolicy(listening=True, authenticated=True, allow_http=True)
    for url in (server.url + "/m/model.safetensors", server.url.replace("127.0.0.1", "localhost") + "/m/model.safetensors"):
        with pytest.raises(DownloadError, match="private, loopback or link-local"):
            download_url(url, "checkpoint", models, policy=listening)
    assert server.requests == []
    for address in ("10.1.2.3", "192.168.0.10", "169.254.169.254", "::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1"):
        with pytest.raises(DownloadError):
            listening.check_address(address)
    listening.check_address("8.8.8.8")  # a public address is fine

    with pytest.raises(DownloadError, match="--auth"):
        download_url(server.url + "/m/model.safetensors", "checkpoint", models,
                     policy=DownloadPolicy(listening=True, allow_http=True, allow_private_addresses=True))
    # the explicit flags (a LAN mirror; tests) allow it
    lan = DownloadPolicy(listening=True, allow_without_auth=True, allow_private_addresses=True, allow_http=True)
    assert download_url(server.url + "/m/model.safetensors", "checkpoint", models, policy=lan).sha256 == SHA


def test_checksum_mismatch_removes_the_file(server, tmp_path):
    with pytest.raises(DownloadError, match="SHA-256 mismatch"):
        download_url(server.url + "/m/model.safetensors", "checkpoint", tmp_path / "models", policy=LOCAL,
                     expected_sha256="0" * 64)
    assert not list((tmp_path / "models").rglob("*.safetensors*"))
    result = download_url(server.url + "/m/model.safetensors", "checkpoint", tmp_path / "models", policy=LOCAL,
                          expected_sha256=SHA.upper())
    assert result.sha256 == SHA


def test_only_https_unless_allowed(server, tmp_path):
    with pytest.raises(DownloadError, match="only https://"):
        download_url(server.url + "/m/model.safetensors", "checkpoint", tmp_path / "models", policy=DownloadPolicy())
    with pytest.raises(DownloadError, match="only https://"):
        download_url("file:///etc/passwd", "checkpoint", tmp_path / "models", policy=LOCAL)
    assert server.requests == []


def test_hub_downloads_are_refused_offline_and_for_pickles(tmp_path):
    assert os.environ.get("HF_HUB_OFFLINE") == "1"
    with pytest.raises(DownloadError, match="not reachable"):
        download_hub("someone/some-model", "checkpoint", tmp_path / "models", policy=LOCAL)
    with pytest.raises(DownloadError, match="not reachable"):
        download_hub("someone/some-model", "lora", tmp_path / "models", policy=LOCAL, filename="x.safetensors")
    with pytest.raises(DownloadError, match="pickle"):
        download_hub("someone/some-model", "checkpoint", tmp_path / "models", policy=LOCAL, filename="x.ckpt")
    with pytest.raises(DownloadError, match="not a hub repository id"):
        download_hub("../x", "checkpoint", tmp_path / "models", policy=LOCAL)
    assert not list((tmp_path / "models").rglob("*.safetensors"))


def test_the_address_is_checked_on_the_connection_itself(server, tmp_path, monkeypatch):
    """A host that resolved to a public address when checked and to a loopback one when connecting
    (DNS rebinding), or a redirect to a LAN address: the connection's own peer address is refused."""
    import webui.pipelines.downloads as downloads

    monkeypatch.setattr(downloads, "_check_host_resolves_publicly", lambda parts, policy: None)
    listening = DownloadPolicy(listening=True, authenticated=True, allow_http=True)
    with pytest.raises(DownloadError, match="private, loopback or link-local"):
        download_url(server.url + "/redirect/m/model.safetensors", "checkpoint", tmp_path / "models",
                     policy=listening)
    assert server.requests == []  # refused right after connecting, before the request was sent
    assert not (tmp_path / "models").exists()
