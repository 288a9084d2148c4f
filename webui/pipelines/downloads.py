"""Downloading models into ``models/`` from an HTTPS URL or the HuggingFace hub.

For the browser-only user (Colab, a LAN box): the Models page gives a URL or a hub id and
the file lands in the folder of its kind (``Stable-diffusion``, ``Lora``, ``VAE``), where the
model lists find it.

What a download does:

- **only safe formats**: ``.safetensors`` (and, for a whole hub repository, its configs and
  tokenizer files); ``.ckpt`` / ``.pt`` / ``.bin`` only when the app was started with
  ``--allow-pickle`` (pickle files can run code when loaded);
- **progress**: ``progress(DownloadProgress)`` after every chunk;
- **resume**: the bytes go to ``<name>.part``; a later download of the same file continues
  with an HTTP ``Range`` request (and a lost connection is resumed ``retries`` times at once);
- **SHA-256**: computed while downloading and returned; when an expected hash is given and
  does not match, the file is removed and :class:`DownloadError` says so;
- **the server's own network**: when the server listens beyond localhost, a URL whose host
  resolves to a private, loopback, link-local or otherwise non-public address is refused (a
  download form must not become a way to probe the LAN or cloud metadata endpoints); the
  address is checked on every connection, redirects included, after DNS resolution;
- **who may download**: when the server listens beyond localhost, downloading needs a login
  (``--auth``) or the explicit flag ``--allow-downloads``.

The rules are one :class:`DownloadPolicy`, built from the app's options.
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import os
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Callable

from webui.errors import EaselError
from webui.models_store import MODEL_FOLDERS, Origin, OriginRecord, now
from webui.pipelines.sources import PICKLE_WEIGHT_SUFFIXES, SAFE_WEIGHT_SUFFIXES

CHUNK_SIZE = 1 << 20
PART_SUFFIX = ".part"
SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._ ()+\-]*$")
# files of a hub repository that a diffusers folder needs besides its weights
HUB_FOLDER_PATTERNS = ["*.json", "*.txt", "*.model", "*.safetensors"]
HUB_PICKLE_PATTERNS = ["*.bin", "*.ckpt", "*.pt"]


class DownloadError(EaselError):
    """A download that was refused or failed, with a message for the user."""


@dataclass(frozen=True)
class DownloadPolicy:
    """What downloads the app allows (from its command-line options).

    ``listening``: the server is reachable beyond this machine (``--listen`` or ``--share``);
    ``authenticated``: it asks for a login (``--auth``); ``allow_without_auth``: the explicit
    flag (``--allow-downloads``) to download while listening without a login;
    ``allow_private_addresses``: allow URLs on private/loopback addresses while listening
    (``--allow-lan-downloads``: a model server on the LAN; tests); ``allow_http``: plain
    ``http://`` URLs too (the same flag; a hash checks what came); ``allow_pickle``: pickle
    checkpoints (``--allow-pickle``).
    """

    listening: bool = False
    authenticated: bool = False
    allow_without_auth: bool = False
    allow_private_addresses: bool = False
    allow_http: bool = False
    allow_pickle: bool = False

    @property
    def weight_suffixes(self) -> tuple[str, ...]:
        return SAFE_WEIGHT_SUFFIXES + (PICKLE_WEIGHT_SUFFIXES if self.allow_pickle else ())

    def check_may_download(self) -> None:
        """Raise :class:`DownloadError` when this server may not download at all."""
        if self.listening and not (self.authenticated or self.allow_without_auth):
            raise DownloadError("Downloading is off: this server listens beyond localhost without a login. Start "
                                "Easel with --auth USER:PASSWORD (or --allow-downloads to allow it anyway).")

    def check_address(self, address: str) -> None:
        """Raise :class:`DownloadError` for an IP address a listening server must not fetch from."""
        if not self.listening or self.allow_private_addresses:
            return
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if not ip.is_global or ip.is_multicast:
            raise DownloadError(f"Refused: the address {ip} is private, loopback or link-local, and this server "
                                "listens beyond localhost (start with --allow-lan-downloads to allow LAN URLs).")

    def check_suffix(self, filename: str) -> None:
        """Raise :class:`DownloadError` unless ``filename`` is a weight file this app may load."""
        suffix = Path(filename).suffix.lower()
        if suffix in self.weight_suffixes:
            return
        if suffix in PICKLE_WEIGHT_SUFFIXES:
            raise DownloadError(f"Refused {filename!r}: {suffix} files are pickles, which can run arbitrary code "
                                "when loaded. Use a .safetensors file, or start Easel with --allow-pickle.")
        raise DownloadError(f"Refused {filename!r}: only .safetensors model files are downloaded"
                            f"{' (and .ckpt/.pt/.bin with --allow-pickle)' if not self.allow_pickle else ''}.")


@dataclass(frozen=True)
class DownloadProgress:
    """How far a download is: bytes so far (resumed bytes included) and the total when known."""

    filename: str
    done_bytes: int
    total_bytes: int | None

    @property
    def fraction(self) -> float | None:
        return self.done_bytes / self.total_bytes if self.total_bytes else None


@dataclass(frozen=True)
class DownloadResult:
    """A finished download: where it is, its SHA-256 and size, and how many bytes came from a resumed part."""

    path: Path
    sha256: str
    size_bytes: int
    resumed_bytes: int = 0


ProgressCallback = Callable[[DownloadProgress], None]


def kind_folder(models_dir: Path, kind: str) -> Path:
    """The folder of a model kind (``checkpoint``, ``lora``, ``vae``) under ``models_dir``."""
    if kind not in MODEL_FOLDERS:
        raise DownloadError(f"unknown model kind {kind!r} (one of {', '.join(MODEL_FOLDERS)})")
    return Path(models_dir) / MODEL_FOLDERS[kind]


def safe_filename(name: str) -> str:
    """``name`` if it is a plain file name (no folders, no leading dot), else :class:`DownloadError`."""
    name = name.strip()
    if not SAFE_NAME.match(name) or name in (".", "..") or "/" in name or "\\" in name:
        raise DownloadError(f"{name!r} is not a plain file name (letters, digits, . _ - + ( ) and spaces)")
    return name


# --------------------------------------------------------------------------------------------
# Guarded connections: every connection (redirects included) is checked after DNS resolution
# --------------------------------------------------------------------------------------------


def _guarded(connection_class: type, policy: DownloadPolicy) -> type:
    class Guarded(connection_class):  # type: ignore[misc, valid-type]
        def connect(self) -> None:
            super().connect()
            try:
                policy.check_address(self.sock.getpeername()[0])
            except DownloadError:
                self.close()
                raise

    return Guarded


class _GuardedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: DownloadPolicy) -> None:
        super().__init__()
        self.connection = _guarded(http.client.HTTPConnection, policy)

    def http_open(self, req):
        return self.do_open(self.connection, req)


class _GuardedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: DownloadPolicy) -> None:
        super().__init__()
        self.connection = _guarded(http.client.HTTPSConnection, policy)

    def https_open(self, req):
        return self.do_open(self.connection, req, context=self._context)


class _SchemeCheckingRedirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: DownloadPolicy) -> None:
        super().__init__()
        self.policy = policy

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        _check_scheme(newurl, self.policy)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _check_scheme(url: str, policy: DownloadPolicy) -> urllib.parse.SplitResult:
    parts = urllib.parse.urlsplit(url)
    allowed = ("https", "http") if policy.allow_http else ("https",)
    if parts.scheme.lower() not in allowed:
        raise DownloadError(f"Refused {url!r}: only {' and '.join(s + '://' for s in allowed)} URLs are downloaded.")
    if not parts.hostname:
        raise DownloadError(f"Refused {url!r}: no host name.")
    return parts


def _opener(policy: DownloadPolicy) -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(_GuardedHTTPHandler(policy), _GuardedHTTPSHandler(policy),
                                       _SchemeCheckingRedirects(policy))


def _check_host_resolves_publicly(parts: urllib.parse.SplitResult, policy: DownloadPolicy) -> None:
    """Fail early, before any request, when the host names a refused address."""
    if not policy.listening or policy.allow_private_addresses:
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DownloadError(f"Cannot resolve {parts.hostname!r}: {exc}") from exc
    for info in infos:
        policy.check_address(info[4][0])


def _filename_from_headers(headers: Message) -> str | None:
    disposition = headers.get("Content-Disposition")
    if not disposition:
        return None
    message = Message()
    message["Content-Disposition"] = disposition
    name = message.get_filename()
    return Path(name).name if name else None


def _hash_of_part(path: Path) -> "hashlib._Hash":
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_SIZE), b""):
            digest.update(chunk)
    return digest


def _content_range_start(value: str | None) -> int | None:
    match = re.match(r"^\s*bytes\s+(\d+)-\d+/(?:\d+|\*)\s*$", value or "")
    return int(match.group(1)) if match else None


def _total_from_headers(headers: Message, start: int, status: int) -> int | None:
    if status == 206:
        match = re.match(r"^\s*bytes\s+\d+-\d+/(\d+)\s*$", headers.get("Content-Range") or "")
        if match:
            return int(match.group(1))
    length = headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def _finish(part: Path, target: Path, digest: str, expected_sha256: str | None) -> None:
    if expected_sha256 and digest != expected_sha256.strip().lower():
        part.unlink(missing_ok=True)
        raise DownloadError(f"SHA-256 mismatch for {target.name}: expected {expected_sha256.strip().lower()}, got "
                            f"{digest}. The file was removed.")
    os.replace(part, target)


def download_url(url: str, kind: str, models_dir: Path, *, policy: DownloadPolicy, filename: str | None = None,
                 expected_sha256: str | None = None, progress: ProgressCallback | None = None,
                 origins: OriginRecord | None = None, retries: int = 3, timeout: float = 30.0,
                 chunk_size: int = CHUNK_SIZE) -> DownloadResult:
    """Download ``url`` into the folder of ``kind`` (``checkpoint``, ``lora``, ``vae``) and return the result.

    ``filename`` names the file (default: the URL's last path segment, else the server's
    ``Content-Disposition``). A ``.part`` left by an earlier attempt is resumed with an HTTP
    ``Range`` request; a connection lost midway is resumed up to ``retries`` times. Raises
    :class:`DownloadError` for a refused URL, name or format, an existing file, an HTTP error, a
    connection lost more often than ``retries`` (the ``.part`` stays for the next attempt), or a
    SHA-256 that differs from ``expected_sha256`` (the file is removed).
    """
    policy.check_may_download()
    parts = _check_scheme(url.strip(), policy)
    url = url.strip()
    _check_host_resolves_publicly(parts, policy)
    folder = kind_folder(models_dir, kind)
    if expected_sha256 and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256.strip()):
        raise DownloadError("the expected SHA-256 must be 64 hexadecimal digits")
    name = filename or Path(urllib.parse.unquote(parts.path)).name
    if name and Path(name).suffix.lower() in SAFE_WEIGHT_SUFFIXES + PICKLE_WEIGHT_SUFFIXES:
        name = safe_filename(name)
        policy.check_suffix(name)
    elif filename:
        policy.check_suffix(safe_filename(filename))
    else:
        name = ""  # from the response's Content-Disposition
    opener = _opener(policy)
    attempts = 0
    resumed_bytes = 0
    while True:
        target = folder / name if name else None
        part = target.with_name(target.name + PART_SUFFIX) if target else None
        if target is not None and target.exists():
            raise DownloadError(f"{target.name} is already in {folder.name}/; remove or rename it first.")
        start = part.stat().st_size if part is not None and part.exists() else 0
        request = urllib.request.Request(url, headers={"User-Agent": "Easel model downloader",
                                                       **({"Range": f"bytes={start}-"} if start else {})})
        try:
            response = opener.open(request, timeout=timeout)
        except DownloadError:
            raise
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and start:  # the range starts at the end: the part is the whole file
                return _completed(url, target, part, None, expected_sha256, origins, progress, resumed_bytes=start)
            raise DownloadError(f"The server answered {exc.code} {exc.reason} for {url}") from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, DownloadError):
                raise reason from None
            raise DownloadError(f"Cannot reach {parts.hostname}: {reason}") from exc
        with response:
            if not name:
                named = _filename_from_headers(response.headers)
                if not named:
                    raise DownloadError(f"{url} names no file (no .safetensors name in the URL or in the server's "
                                        "answer); give the file name to save it as.")
                name = safe_filename(named)
                policy.check_suffix(name)
                continue  # now that the name (and so the .part) is known, start again
            status = response.status
            offset = _content_range_start(response.headers.get("Content-Range")) if status == 206 else None
            if status == 206 and offset != start:
                raise DownloadError(f"The server resumed at byte {offset}, not {start}; remove {part.name} and retry")
            if status != 206:
                start = 0  # the server sent the whole file
            total = _total_from_headers(response.headers, start, status)
            if start:
                resumed_bytes = max(resumed_bytes, start)
            folder.mkdir(parents=True, exist_ok=True)
            digest = _hash_of_part(part) if start else hashlib.sha256()
            done = start
            try:
                with open(part, "ab" if start else "wb") as handle:
                    while True:
                        chunk = response.read1(chunk_size)  # what has arrived: progress keeps moving
                        if not chunk:
                            break
                        handle.write(chunk)
                        digest.update(chunk)
                        done += len(chunk)
                        if progress is not None:
                            progress(DownloadProgress(name, done, total))
                if total is not None and done < total:
                    raise http.client.IncompleteRead(b"", total - done)
            except (OSError, http.client.HTTPException) as exc:
                attempts += 1
                if attempts > retries:
                    raise DownloadError(f"The connection was lost after {done} of {total or '?'} bytes of {name}; "
                                        f"download again to resume from {part.name}.") from exc
                continue
        return _completed(url, target, part, digest.hexdigest(), expected_sha256, origins, progress,
                          resumed_bytes=resumed_bytes)


def _completed(url: str, target: Path, part: Path, digest: str | None, expected_sha256: str | None,
               origins: OriginRecord | None, progress: ProgressCallback | None, resumed_bytes: int) -> DownloadResult:
    digest = digest or _hash_of_part(part).hexdigest()
    size = part.stat().st_size
    _finish(part, target, digest, expected_sha256)
    if progress is not None:
        progress(DownloadProgress(target.name, size, size))
    if origins is not None:
        origins.set(target, Origin(source="url", location=url, sha256=digest, downloaded_at=now()))
    return DownloadResult(target, digest, size, resumed_bytes)


# --------------------------------------------------------------------------------------------
# The HuggingFace hub
# --------------------------------------------------------------------------------------------


def _hub_error(repo_id: str, exc: Exception) -> DownloadError:
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    if isinstance(exc, GatedRepoError):
        return DownloadError(f"{repo_id} is gated: accept its licence on the hub with your account and start Easel "
                             "with HF_TOKEN set to a token of that account.")
    if isinstance(exc, RepositoryNotFoundError):
        return DownloadError(f"{repo_id} does not exist on the hub (or is private: set HF_TOKEN).")
    if isinstance(exc, LocalEntryNotFoundError) or "offline" in str(exc).lower():
        return DownloadError(f"Cannot download {repo_id}: the hub is not reachable (offline, or HF_HUB_OFFLINE=1 "
                             "is set).")
    return DownloadError(f"Cannot download {repo_id} from the hub ({type(exc).__name__}: {exc})")


def _hub_progress_class(progress: ProgressCallback | None, label: str):
    """A tqdm class for huggingface_hub that reports bytes to ``progress``."""
    from tqdm.auto import tqdm

    class Reporting(tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            super().update(n)
            if progress is not None and self.unit == "B":
                progress(DownloadProgress(label, int(self.n), int(self.total) if self.total else None))

    return Reporting


def download_hub(repo_id: str, kind: str, models_dir: Path, *, policy: DownloadPolicy, filename: str | None = None,
                 revision: str | None = None, expected_sha256: str | None = None,
                 progress: ProgressCallback | None = None, origins: OriginRecord | None = None) -> DownloadResult:
    """Download from the HuggingFace hub: one file (``filename``, e.g. a single-file checkpoint or a
    LoRA) into the folder of ``kind``, or, without ``filename``, the whole diffusers repository
    (configs, tokenizers and ``.safetensors`` weights; pickles only with ``allow_pickle``) into
    ``Stable-diffusion/<repository name>/``. The result's SHA-256 is the file's (for a folder: its
    UNet / transformer weights'). Raises :class:`DownloadError` (offline, gated, unknown, refused)."""
    from huggingface_hub import hf_hub_download, snapshot_download

    from webui.pipelines.hashing import denoiser_weights_file, sha256_file
    from webui.pipelines.sources import HUB_ID_PATTERN

    policy.check_may_download()
    repo_id = repo_id.strip()
    if not HUB_ID_PATTERN.match(repo_id):
        raise DownloadError(f"{repo_id!r} is not a hub repository id (owner/name)")
    folder = kind_folder(models_dir, kind)
    if filename:
        name = safe_filename(Path(filename).name)
        policy.check_suffix(name)
        target = folder / name
        if target.exists():
            raise DownloadError(f"{name} is already in {folder.name}/; remove or rename it first.")
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".hub-", dir=folder) as staging:
            try:
                fetched = Path(hf_hub_download(repo_id, filename, revision=revision, local_dir=staging,
                                               tqdm_class=_hub_progress_class(progress, name)))
            except Exception as exc:  # noqa: BLE001 - huggingface_hub's many errors, reported in words
                raise _hub_error(repo_id, exc) from exc
            digest = sha256_file(fetched)
            part = target.with_name(target.name + PART_SUFFIX)
            shutil.move(str(fetched), part)
            _finish(part, target, digest, expected_sha256)
        size = target.stat().st_size
        if origins is not None:
            origins.set(target, Origin(source="hub", location=repo_id, filename=filename, sha256=digest,
                                       downloaded_at=now()))
        return DownloadResult(target, digest, size)

    if kind != "checkpoint":
        raise DownloadError("a whole hub repository is a diffusers model: download it as a checkpoint, or name "
                            "the file of a LoRA / VAE")
    target = folder / safe_filename(repo_id.split("/", 1)[1])
    if target.exists():
        raise DownloadError(f"{target.name} is already in {folder.name}/; remove or rename it first.")
    staging = folder / f".{target.name}-downloading"  # kept on failure: a retry continues from it
    patterns = HUB_FOLDER_PATTERNS + (HUB_PICKLE_PATTERNS if policy.allow_pickle else [])
    try:
        snapshot_download(repo_id, revision=revision, local_dir=staging, allow_patterns=patterns,
                          tqdm_class=_hub_progress_class(progress, target.name))
    except Exception as exc:  # noqa: BLE001
        raise _hub_error(repo_id, exc) from exc
    if not (staging / "model_index.json").is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise DownloadError(f"{repo_id} is not a diffusers repository (no model_index.json); name the file to "
                            "download instead")
    shutil.rmtree(staging / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    os.replace(staging, target)
    weights = denoiser_weights_file(target)
    digest = sha256_file(weights) if weights else ""
    if expected_sha256 and digest != expected_sha256.strip().lower():
        shutil.rmtree(target, ignore_errors=True)
        raise DownloadError(f"SHA-256 mismatch for {repo_id}'s weights: expected {expected_sha256}, got {digest}. "
                            "The folder was removed.")
    if origins is not None:
        origins.set(target, Origin(source="hub", location=repo_id, sha256=digest, downloaded_at=now()))
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    return DownloadResult(target, digest, size)
