"""Model hashes for the infotext, as AUTOMATIC1111 writes them (first 10 hex digits of SHA-256).

Hashing a multi-GB file takes a while, so hashes are cached in the data folder keyed by
path, size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path

SHORT_HASH_LENGTH = 10
DENOISER_WEIGHT_FILES = (
    "unet/diffusion_pytorch_model.safetensors",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "transformer/diffusion_pytorch_model.safetensors",
    "transformer/diffusion_pytorch_model.fp16.safetensors",
)


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """Full SHA-256 hex digest of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_size), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_state_dict(state_dict) -> str:
    """SHA-256 of a state dict serialised as safetensors (used for the built-in models)."""
    from safetensors.torch import save

    tensors = {key: value.detach().contiguous().cpu() for key, value in state_dict.items()}
    return hashlib.sha256(save(tensors)).hexdigest()


def denoiser_weights_file(folder: Path) -> Path | None:
    """The UNet / transformer weight file of a diffusers folder, the part that defines the model."""
    for relative in DENOISER_WEIGHT_FILES:
        candidate = Path(folder) / relative
        if candidate.is_file():
            return candidate
    return None


class HashCache:
    """SHA-256 hashes of files, cached on disk by path, size and mtime."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._entries = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(self._entries, dict):
                self._entries = {}
        except (OSError, ValueError):
            self._entries = {}

    @staticmethod
    def _key(file: Path) -> tuple[Path, str]:
        file = Path(file).resolve()
        stat = file.stat()
        return file, f"{file}|{stat.st_size}|{stat.st_mtime_ns}"

    def cached(self, file: Path) -> str | None:
        """The file's SHA-256 if it was computed before (nothing is read), else None."""
        try:
            _, key = self._key(file)
        except OSError:
            return None
        with self._lock:
            return self._entries.get(key)

    def sha256(self, file: Path) -> str:
        """The file's full SHA-256, computed once per (path, size, mtime)."""
        file, key = self._key(file)
        with self._lock:
            if key in self._entries:
                return self._entries[key]
        digest = sha256_file(file)
        with self._lock:
            self._entries[key] = digest
            self._write()
        return digest

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hashes-", dir=self.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self._entries, handle)
        os.replace(tmp, self.path)


def short_hash(full_hash: str | None) -> str | None:
    return full_hash[:SHORT_HASH_LENGTH] if full_hash else None
