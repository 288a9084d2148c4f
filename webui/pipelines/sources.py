"""Where models come from: the offline demo model, built-in tiny models, local files and folders, hub presets.

Names are what the UI and the API use to pick a model. A name is only ever resolved to
one of the listed sources or to a hub repository id; a path from a request is never read
directly, so nothing outside the configured models folder is touched.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from webui.errors import EaselError
from webui.pipelines.families import FAMILIES, TINY_MODELS

REPO_MODELS_DIR = Path(__file__).resolve().parent.parent.parent / "models"
DEMO_MODEL_NAME = "easel-shapes"
DEMO_MODEL_DIR = REPO_MODELS_DIR / "demo" / DEMO_MODEL_NAME
DEMO_NATIVE_SIZE = 128
GET_A_REAL_MODEL = (
    "For real images put a `.safetensors` checkpoint in `models/Stable-diffusion/` or pick a hub model "
    "such as Stable Diffusion 1.5 (needs network on first use)."
)
DEMO_NOTE = (
    "**{name}** is Easel's offline demo model: a small model trained here on coloured shapes. It draws prompts "
    "like *a small red circle on a blue background* (shapes: circle, square, triangle, star, diamond, cross; "
    "sizes small/large; positions left/right/top/bottom) at 128x128, and nothing else. " + GET_A_REAL_MODEL
)
TINY_NOTE = (
    "**{name}** is a built-in tiny model with random weights: it draws noise. It is here to try the UI offline. "
    + GET_A_REAL_MODEL
)

CHECKPOINT_SUBDIR = "Stable-diffusion"
SAFE_WEIGHT_SUFFIXES = (".safetensors",)
PICKLE_WEIGHT_SUFFIXES = (".ckpt", ".pt", ".bin")
PRESETS_FILE = Path(__file__).with_name("presets.json")
HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
SIDECAR_CONFIG_SUFFIX = ".config"


class UnknownModelError(EaselError, LookupError):
    """The requested model name is not one Easel knows; the message lists what is available."""


@dataclass(frozen=True)
class ModelSource:
    """One loadable model.

    ``kind`` is ``builtin`` (a tiny offline model), ``file`` (a single-file checkpoint),
    ``folder`` (a local diffusers folder) or ``hub`` (a repository id). ``family`` is
    known up front for builtins and presets and detected on load for local models.
    """

    name: str
    kind: str
    location: str
    label: str = ""
    family: str | None = None
    gated: bool = False
    note: str = ""  # what the UI tells a user who picks this model (markdown), if anything
    native_size: int | None = None  # the side the model was trained at, when it is not its family's

    @property
    def display_name(self) -> str:
        return self.label or self.name


def hub_offline() -> bool:
    """True when the user asked huggingface_hub to stay offline (``HF_HUB_OFFLINE=1``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hub_reachable(timeout: float = 1.5) -> bool:
    """Whether the model hub answers within ``timeout`` seconds (never asked when offline is set)."""
    if hub_offline():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        with urllib.request.urlopen(urllib.request.Request(endpoint + "/api/models?limit=1", method="HEAD"),
                                    timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered
    except (OSError, ValueError):
        return False


def load_presets(path: Path = PRESETS_FILE) -> list[ModelSource]:
    """The preset hub models from the data file (not from code)."""
    data = json.loads(path.read_text(encoding="utf-8"))
    presets = []
    for entry in data.get("models", []):
        family = entry.get("family")
        if family not in FAMILIES:
            raise ValueError(f"{path}: unknown family {family!r} for {entry.get('id')!r}")
        presets.append(
            ModelSource(
                name=entry["id"],
                kind="hub",
                location=entry["id"],
                label=entry.get("label", ""),
                family=family,
                gated=bool(entry.get("gated", False)),
            )
        )
    return presets


def _is_diffusers_folder(path: Path) -> bool:
    if not (path / "model_index.json").is_file():
        return False
    # A folder with only configs (a sidecar for a single file) is not a model by itself.
    return any(p.suffix in (".safetensors", ".bin") for p in path.rglob("*") if p.is_file())


def _is_sidecar(folder: Path, suffixes: tuple[str, ...]) -> bool:
    """``model.config/`` beside ``model.safetensors`` holds that file's configs, not a model."""
    if not folder.name.endswith(SIDECAR_CONFIG_SUFFIX):
        return False
    stem = folder.name[: -len(SIDECAR_CONFIG_SUFFIX)]
    return any((folder.parent / (stem + suffix)).is_file() for suffix in suffixes)


def scan_local_models(models_dir: Path, allow_pickle: bool = False) -> list[ModelSource]:
    """Single-file checkpoints and diffusers folders under ``models_dir/Stable-diffusion``."""
    root = Path(models_dir) / CHECKPOINT_SUBDIR
    if not root.is_dir():
        return []
    suffixes = SAFE_WEIGHT_SUFFIXES + (PICKLE_WEIGHT_SUFFIXES if allow_pickle else ())
    found: list[ModelSource] = []
    pending = [root]
    while pending:
        folder = pending.pop()
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            relative = entry.relative_to(root).as_posix()
            if entry.is_dir():
                if _is_sidecar(entry, suffixes):
                    continue
                if _is_diffusers_folder(entry):
                    found.append(ModelSource(name=relative, kind="folder", location=str(entry)))
                elif not (entry / "model_index.json").exists():
                    pending.append(entry)
            elif entry.is_file() and entry.suffix.lower() in suffixes:
                found.append(ModelSource(name=relative, kind="file", location=str(entry)))
    return sorted(found, key=lambda source: source.name.lower())


def builtin_models() -> list[ModelSource]:
    """The tiny offline models (random weights: their images are noise)."""
    return [
        ModelSource(name=name, kind="builtin", location=name, label=f"{name} (built-in, random weights: draws noise)",
                    family=family, note=TINY_NOTE.format(name=name))
        for name, family in TINY_MODELS.items()
    ]


def demo_models(folder: Path | None = None) -> list[ModelSource]:
    """The offline demo model shipped with Easel (a trained SD 1.x-architecture folder), when present."""
    folder = Path(folder or DEMO_MODEL_DIR)
    if not _is_diffusers_folder(folder):
        return []
    return [ModelSource(name=DEMO_MODEL_NAME, kind="folder", location=str(folder),
                        label=f"{DEMO_MODEL_NAME} (offline demo model: coloured shapes, 128 px)", family="sd1",
                        note=DEMO_NOTE.format(name=DEMO_MODEL_NAME), native_size=DEMO_NATIVE_SIZE)]


def sidecar_config(source: ModelSource) -> Path | None:
    """A diffusers config folder beside a single-file checkpoint (``model.config/``), if any.

    It lets a single file load fully offline: diffusers otherwise fetches the matching
    configs from the hub on first load.
    """
    if source.kind != "file":
        return None
    path = Path(source.location)
    candidate = path.with_name(path.stem + SIDECAR_CONFIG_SUFFIX)
    return candidate if (candidate / "model_index.json").is_file() else None


class ModelCatalog:
    """Lists and resolves model names for one models folder."""

    def __init__(self, models_dir: Path, allow_pickle: bool = False) -> None:
        self.models_dir = Path(models_dir)
        self.allow_pickle = allow_pickle
        self.presets = load_presets()

    def list(self) -> list[ModelSource]:
        """The demo model and the built-ins first, then local models, then hub presets."""
        return (demo_models() + builtin_models() + scan_local_models(self.models_dir, self.allow_pickle)
                + self.presets)

    def default_name(self, hub_reachable: Callable[[], bool] = hub_reachable) -> str:
        """The model picked when none is configured.

        A local checkpoint if there is one; else, with the hub in reach, the first preset
        (Stable Diffusion 1.5, downloaded on first use as AUTOMATIC1111 does); else the
        offline demo model; else the first built-in tiny model. ``hub_reachable`` is only
        asked when no local checkpoint decides it (it may wait on the network).
        """
        local = scan_local_models(self.models_dir, self.allow_pickle)
        if local:
            return local[0].name
        if self.presets and hub_reachable():
            return self.presets[0].name
        offline = demo_models() or builtin_models()
        return offline[0].name

    def names(self) -> list[str]:
        return [source.name for source in self.list()]

    def resolve(self, name: str) -> ModelSource:
        """The source for ``name``: a listed model, else a hub repository id."""
        name = (name or "").strip()
        for source in self.list():
            if source.name == name:
                return source
        if HUB_ID_PATTERN.match(name) and not name.endswith(SAFE_WEIGHT_SUFFIXES + PICKLE_WEIGHT_SUFFIXES):
            return ModelSource(name=name, kind="hub", location=name)
        if name.lower().endswith(PICKLE_WEIGHT_SUFFIXES) and not self.allow_pickle:
            raise UnknownModelError(
                f"{name!r} is a pickle checkpoint; only .safetensors weights load unless Easel is started with "
                "--allow-pickle (pickle files can run arbitrary code)."
            )
        available = ", ".join(self.names()[:20])
        raise UnknownModelError(
            f"Unknown model {name!r}. Put checkpoints in {self.models_dir / CHECKPOINT_SUBDIR} or use a hub id "
            f"such as 'stabilityai/stable-diffusion-xl-base-1.0'. Available: {available}"
        )
