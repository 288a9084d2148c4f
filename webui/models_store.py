"""The local models: what is in ``models/`` (checkpoints, LoRAs, VAEs) and where each came from.

:func:`list_local_models` is what the Models page shows: one :class:`LocalModel` per
checkpoint (single file or diffusers folder), LoRA and VAE, with its size, family, SHA-256
(from the app's hash cache: computed once per file version) and origin. Origins are kept in
one small record file in the data folder (:class:`OriginRecord`, ``model_origins.json``),
written by the downloader (:mod:`webui.pipelines.downloads`) and by exports; a file that came
from elsewhere (copied in by hand) has no origin.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from webui.pipelines.hashing import HashCache, denoiser_weights_file
from webui.pipelines.sources import PICKLE_WEIGHT_SUFFIXES, SAFE_WEIGHT_SUFFIXES, scan_local_models

# kind -> folder under models/ (AUTOMATIC1111's layout)
MODEL_FOLDERS = {"checkpoint": "Stable-diffusion", "lora": "Lora", "vae": "VAE"}
ORIGINS_FILE = "model_origins.json"

# LoRA metadata (kohya ``ss_base_model_version``, Easel ``easel_family``) -> family
_KOHYA_BASE_VERSIONS = {"sd_v1": "sd1", "sd_v2": "sd2", "sd_v2_768_v": "sd2", "sdxl_base_v1-0": "sdxl",
                        "sdxl_base_v0-9": "sdxl", "sd3": "sd3"}


@dataclass(frozen=True)
class Origin:
    """Where a model file or folder came from: a URL or a hub repository (and file), and when."""

    source: str  # "url" or "hub"
    location: str  # the URL, or the hub repository id
    filename: str = ""  # the file within a hub repository (empty: the whole repository)
    sha256: str = ""
    downloaded_at: float = 0.0

    def describe(self) -> str:
        """One line for the listing: ``hub: owner/repo (file)`` or ``url: https://...``."""
        where = f"{self.location} ({self.filename})" if self.filename else self.location
        return f"{self.source}: {where}"


class OriginRecord:
    """Origins of downloaded models, keyed by their path relative to the models folder.

    One JSON file (``<data>/model_origins.json``), written atomically; a lock serialises the
    writers of one app. Entries of files that no longer exist are simply never listed.
    """

    def __init__(self, path: Path, models_dir: Path) -> None:
        self.path = Path(path)
        self.models_dir = Path(models_dir)
        self._lock = threading.Lock()

    def _key(self, model_path: Path) -> str:
        return Path(model_path).resolve().relative_to(self.models_dir.resolve()).as_posix()

    def _read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, model_path: Path) -> Origin | None:
        """The recorded origin of ``model_path`` (a file or folder under the models folder), if any."""
        try:
            entry = self._read().get(self._key(model_path))
        except ValueError:  # not under the models folder
            return None
        if not isinstance(entry, dict):
            return None
        try:
            return Origin(**{k: v for k, v in entry.items() if k in Origin.__dataclass_fields__})
        except TypeError:
            return None

    def set(self, model_path: Path, origin: Origin) -> None:
        """Record where ``model_path`` came from (replacing an older record)."""
        with self._lock:
            data = self._read()
            data[self._key(model_path)] = asdict(origin)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".origins-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)


@dataclass
class LocalModel:
    """One row of the Models page."""

    kind: str  # "checkpoint", "lora" or "vae"
    name: str  # as the model lists name it (relative to its kind's folder)
    path: Path
    size_bytes: int
    family: str  # "sd1", "sdxl", ... or "" when it cannot be told
    sha256: str  # full SHA-256 of the file (of the UNet / transformer weights for a diffusers folder); "" not computed
    origin: Origin | None = None
    is_folder: bool = False

    @property
    def short_hash(self) -> str:
        """The first 10 hex digits, as AUTOMATIC1111 shows them."""
        return self.sha256[:10]


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def _weight_suffixes(allow_pickle: bool) -> tuple[str, ...]:
    return SAFE_WEIGHT_SUFFIXES + (PICKLE_WEIGHT_SUFFIXES if allow_pickle else ())


def _safetensors_metadata(path: Path) -> dict[str, str]:
    if path.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return dict(handle.metadata() or {})
    except Exception:  # noqa: BLE001 - an unreadable file is listed without metadata
        return {}


def lora_family(path: Path) -> str:
    """The base family a LoRA was trained for, from its metadata (Easel's or kohya's); "" if unknown."""
    meta = _safetensors_metadata(path)
    if meta.get("easel_family"):
        return meta["easel_family"]
    return _KOHYA_BASE_VERSIONS.get(meta.get("ss_base_model_version", ""), "")


def vae_family(path: Path) -> str:
    """``sd1/sd2/sdxl`` (4 latent channels) or ``sd3`` (16) from the decoder's input width; "" if unknown."""
    if path.suffix != ".safetensors":
        return ""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            for key in ("decoder.conv_in.weight", "first_stage_model.decoder.conv_in.weight"):
                if key in handle.keys():
                    channels = handle.get_slice(key).get_shape()[1]
                    return {4: "sd1/sd2/sdxl", 16: "sd3"}.get(channels, f"{channels}-channel latents")
    except Exception:  # noqa: BLE001
        return ""
    return ""


def _checkpoint_family(source) -> str:
    from webui.pipelines.loaders import detect_family

    try:
        return detect_family(source) or ""
    except Exception:  # noqa: BLE001 - an unreadable or unknown model is still listed
        return ""


def _files_of(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts)),
                  key=lambda p: p.as_posix().lower())


def list_local_models(models_dir: Path, hash_cache: HashCache, origins: OriginRecord | None = None,
                      allow_pickle: bool = False, kinds: tuple[str, ...] = tuple(MODEL_FOLDERS),
                      compute_hashes: bool = True) -> list[LocalModel]:
    """Every local checkpoint, LoRA and VAE under ``models_dir`` (A1111 layout), with size, family,
    SHA-256 and origin. Hashes come from ``hash_cache`` (a large file is read once per version);
    with ``compute_hashes`` off only hashes already in the cache are given (nothing is read), the
    others are ""."""
    models_dir = Path(models_dir)

    def sha256_of(path: Path | None) -> str:
        if path is None:
            return ""
        return hash_cache.sha256(path) if compute_hashes else (hash_cache.cached(path) or "")

    suffixes = _weight_suffixes(allow_pickle)
    rows: list[LocalModel] = []

    def origin_of(path: Path) -> Origin | None:
        return origins.get(path) if origins is not None else None

    if "checkpoint" in kinds:
        for source in scan_local_models(models_dir, allow_pickle):
            path = Path(source.location)
            if source.kind == "folder":
                weights = denoiser_weights_file(path)
                rows.append(LocalModel("checkpoint", source.name, path, folder_size(path), _checkpoint_family(source),
                                       sha256_of(weights), origin_of(path),
                                       is_folder=True))
            else:
                rows.append(LocalModel("checkpoint", source.name, path, path.stat().st_size,
                                       _checkpoint_family(source), sha256_of(path), origin_of(path)))
    for kind, family_of in (("lora", lora_family), ("vae", vae_family)):
        if kind not in kinds:
            continue
        folder = models_dir / MODEL_FOLDERS[kind]
        for path in _files_of(folder, suffixes):
            rows.append(LocalModel(kind, path.relative_to(folder).as_posix(), path, path.stat().st_size,
                                   family_of(path), sha256_of(path), origin_of(path)))
    return rows


def now() -> float:
    """The time stamp origins record (seconds since the epoch)."""
    return time.time()
