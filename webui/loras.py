"""LoRA files of a models folder: listing them and finding the ``<lora:name:weight>`` tags of a prompt.

Shared by the LoRA extension (which loads them into a pipeline) and the REST API (which
lists them and refuses an unknown name before a job is queued). Only files inside
``<models>/Lora/`` are listed; a name is looked up in the listing, never used as a path.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

LORA_SUBDIR = "Lora"
LORA_SUFFIXES = (".safetensors",)
LORA_TAG = re.compile(r"<lora:([^:>]+)(?::([^:>]*))?(?::[^>]*)?>", re.IGNORECASE)
MAX_HEADER_BYTES = 100 * 1024 * 1024


def lora_dir(models_dir: Path | str) -> Path:
    """The LoRA folder of a models folder (A1111 layout)."""
    return Path(models_dir) / LORA_SUBDIR


def list_lora_files(models_dir: Path | str) -> dict[str, Path]:
    """``{name: path}`` of every LoRA file under ``models/Lora/`` (name = file stem, as A1111)."""
    folder = lora_dir(models_dir)
    found: dict[str, Path] = {}
    if not folder.is_dir():
        return found
    root = folder.resolve()
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in LORA_SUFFIXES or not path.is_file():
            continue
        try:
            path.resolve().relative_to(root)  # a symlink pointing outside is not listed
        except ValueError:
            continue
        found.setdefault(path.stem, path)
    return found


def prompt_lora_names(prompt: str | None) -> list[str]:
    """The LoRA names a prompt's ``<lora:name:weight>`` tags ask for, in order."""
    return [match.group(1).strip() for match in LORA_TAG.finditer(prompt or "")]


def safetensors_metadata(path: Path) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file's header (training parameters), ``{}`` when absent or unreadable."""
    try:
        with open(path, "rb") as handle:
            length = struct.unpack("<Q", handle.read(8))[0]
            if length > MAX_HEADER_BYTES:
                return {}
            header = json.loads(handle.read(length))
    except (OSError, ValueError, struct.error):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return dict(metadata) if isinstance(metadata, dict) else {}
