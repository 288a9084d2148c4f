"""Which detectors and segmenters a user can pick, and loading them (one of each kept, on the CPU).

Choices, in order: built-in offline ones (tiny random-weight models, labelled as such, the
demo detector and segmenter for the offline demo model's shapes, labelled as a demo, and GrabCut), local models under ``models/GroundingDino`` and ``models/SAM``, then the hub ids
listed in ``models.json``.

Local layouts understood:

* ``models/GroundingDino/<folder>/config.json`` - a transformers Grounding DINO folder;
* ``models/GroundingDino/<name>.pth`` (or ``.safetensors``) with a groundingdino-py config
  next to it: ``<name>.py``, ``<name>.cfg.py`` or the only ``*.py`` in the folder
  (``GroundingDINO_SwinT_OGC.py``). A ``models/GroundingDino/bert-base-uncased`` folder,
  if present, is used as the text encoder so it runs offline;
* ``models/SAM/<folder>/config.json`` - a transformers SAM or SAM 2 folder.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import detect, segment

MODELS_FILE = Path(__file__).with_name("models.json")
DETECTOR_DIR = "GroundingDino"
SEGMENTER_DIR = "SAM"

TINY_DETECTOR = "tiny-grounding-dino"
TINY_DETECTOR_PY = "tiny-groundingdino-py"
TINY_SAM = "tiny-sam"
TINY_SAM2 = "tiny-sam2"
DEMO_SHAPES = "shapes-demo"
GRABCUT = "grabcut"
BOX = "box"


@dataclass(frozen=True)
class Choice:
    """One pickable detector or segmenter. ``location`` is a hub id, a folder or a file."""

    name: str
    label: str
    backend: str
    location: str = ""
    config: str = ""
    builtin: bool = False


def _hub_entries(key: str) -> list[dict[str, str]]:
    try:
        return json.loads(MODELS_FILE.read_text(encoding="utf-8")).get(key, [])
    except (OSError, ValueError):
        return []


def _groundingdino_config(weights: Path) -> Path | None:
    for candidate in (weights.with_suffix(".py"), weights.with_name(weights.stem + ".cfg.py")):
        if candidate.is_file():
            return candidate
    configs = sorted(weights.parent.glob("*.py"))
    return configs[0] if len(configs) == 1 else None


def detector_choices(models_dir: Path) -> list[Choice]:
    choices = [
        Choice(TINY_DETECTOR, "tiny Grounding DINO (random weights, offline test - boxes are meaningless)",
               "transformers", builtin=True),
        Choice(TINY_DETECTOR_PY, "tiny groundingdino-py (random weights, offline test - boxes are meaningless)",
               "groundingdino-py", builtin=True),
        Choice(DEMO_SHAPES, "shapes (demo: finds the demo model's coloured shapes, e.g. \"the red circle\"; "
               "demo images only)", "demo", builtin=True),
    ]
    folder = Path(models_dir) / DETECTOR_DIR
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "config.json").is_file() and path.name != "bert-base-uncased":
                choices.append(Choice(f"{DETECTOR_DIR}/{path.name}", f"{path.name} (local)", "transformers", str(path)))
            elif path.is_file() and path.suffix in (".pth", ".safetensors"):
                config = _groundingdino_config(path)
                if config is not None:
                    choices.append(Choice(f"{DETECTOR_DIR}/{path.name}", f"{path.name} (local, groundingdino-py)",
                                          "groundingdino-py", str(path), str(config)))
    for entry in _hub_entries("detectors"):
        choices.append(Choice(entry["name"], entry.get("label", entry["name"]), entry.get("backend", "transformers"),
                              entry["name"]))
    return choices


def segmenter_choices(models_dir: Path) -> list[Choice]:
    choices = [
        Choice(GRABCUT, "GrabCut (no weights, offline)", "grabcut", builtin=True),
        Choice(BOX, "Boxes only (no segmentation)", "box", builtin=True),
        Choice(TINY_SAM, "tiny SAM (random weights, offline test - masks are meaningless)", "sam", builtin=True),
        Choice(TINY_SAM2, "tiny SAM 2 (random weights, offline test - masks are meaningless)", "sam", builtin=True),
        Choice(DEMO_SHAPES, "shapes (demo: the demo shape inside each box; demo images only)", "demo", builtin=True),
    ]
    folder = Path(models_dir) / SEGMENTER_DIR
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if path.is_dir() and (path / "config.json").is_file():
                choices.append(Choice(f"{SEGMENTER_DIR}/{path.name}", f"{path.name} (local)", "sam", str(path)))
    for entry in _hub_entries("segmenters"):
        choices.append(Choice(entry["name"], entry.get("label", entry["name"]), entry.get("backend", "sam"),
                              entry["name"]))
    return choices


def find(choices: list[Choice], name: str, what: str) -> Choice:
    for choice in choices:
        if choice.name == name:
            return choice
    raise ValueError(f"Unknown {what} {name!r}; choose one of: {', '.join(c.name for c in choices)}")


class ModelCache:
    """Keeps the last detector and the last segmenter loaded (on the CPU between jobs)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: dict[str, tuple[str, Any]] = {}

    def _get(self, slot: str, name: str, build) -> Any:
        with self._lock:
            current = self._items.get(slot)
            if current is not None and current[0] == name:
                return current[1]
            self._items.pop(slot, None)
            model = build()
            self._items[slot] = (name, model)
            return model

    def detector(self, models_dir: Path, name: str) -> Any:
        choice = find(detector_choices(models_dir), name, "detector")
        return self._get("detector", name, lambda: _explain(choice, lambda: _load_detector(choice, Path(models_dir))))

    def segmenter(self, models_dir: Path, name: str) -> Any:
        choice = find(segmenter_choices(models_dir), name, "segmenter")
        return self._get("segmenter", name, lambda: _explain(choice, lambda: _load_segmenter(choice)))

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class ModelUnavailableError(RuntimeError):
    """A detector or segmenter could not be loaded; the message says why and what to do."""


def _explain(choice: Choice, load) -> Any:
    try:
        return load()
    except OSError as exc:
        if choice.builtin or Path(choice.location).exists():
            raise ModelUnavailableError(f"Could not load {choice.name}: {exc}") from exc
        raise ModelUnavailableError(
            f"{choice.name} is not in the local cache and could not be downloaded ({type(exc).__name__}). "
            "Connect to the internet once (or unset HF_HUB_OFFLINE), put a copy under models/GroundingDino or "
            "models/SAM, or pick GrabCut / a tiny offline model.") from exc


def _load_detector(choice: Choice, models_dir: Path) -> Any:
    if choice.name == TINY_DETECTOR:
        return detect.build_tiny_grounding_dino()
    if choice.name == TINY_DETECTOR_PY:
        return detect.build_tiny_groundingdino_py()
    if choice.name == DEMO_SHAPES:
        return detect.DemoShapesDetector()
    if choice.backend == "groundingdino-py":
        bert = models_dir / DETECTOR_DIR / "bert-base-uncased"
        return detect.GroundingDinoPyDetector.load(choice.location, choice.config,
                                                   text_encoder=str(bert) if bert.is_dir() else None)
    return detect.TransformersDetector.load(choice.location)


def _load_segmenter(choice: Choice) -> Any:
    if choice.backend == "grabcut":
        return segment.GrabCutSegmenter()
    if choice.backend == "box":
        return segment.BoxSegmenter()
    if choice.name == DEMO_SHAPES:
        return segment.DemoShapesSegmenter()
    if choice.name == TINY_SAM:
        return segment.build_tiny_sam()
    if choice.name == TINY_SAM2:
        return segment.build_tiny_sam2()
    return segment.SamSegmenter.load(choice.location)
