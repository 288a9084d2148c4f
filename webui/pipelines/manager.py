"""The pipeline manager: the one place that loads, configures, caches and lends pipelines.

* ``use(name)`` is a context manager that holds the device's lock, so two jobs never run
  on one device at once, and yields a :class:`LoadedModel`.
* Models load on first use, on the CPU, then the ``configure`` callback (the
  ``configure_pipeline`` hooks) runs, then the pipeline moves to the device unless an
  extension placed it itself (offload).
* At most ``max_loaded`` models stay loaded; the least recently used one that is not in
  use is evicted and its memory freed.
"""

from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from webui.pipelines.families import Family, family_spec
from webui.pipelines.hashing import HashCache, denoiser_weights_file, sha256_state_dict, short_hash
from webui.pipelines.loaders import detect_family, load_pipeline
from webui.pipelines.sources import ModelCatalog, ModelSource

log = logging.getLogger(__name__)


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; anything else is used as given."""
    requested = (requested or "auto").strip().lower()
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but this PyTorch build sees no CUDA GPU")
    return device


def default_dtype(device: torch.device, family: str | None = None, precision: str = "auto") -> torch.dtype:
    """fp32 on the CPU; on a GPU fp16, or bf16 for SD3 where the GPU supports it."""
    named = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision in named:
        return named[precision]
    if device.type == "cpu":
        return torch.float32
    if family and family_spec(family).prefers_bf16 and device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


@dataclass
class LoadedModel:
    """A loaded pipeline and what is known about it. Extensions receive this in hooks."""

    source: ModelSource
    family: str
    pipeline: Any
    device: torch.device
    dtype: torch.dtype
    base_scheduler_config: dict
    placement_done: bool = False
    """Set it True in ``configure_pipeline`` when your extension placed the pipeline's modules on
    their devices itself (CPU offload, device maps): the manager then does not move the whole
    pipeline to the device (API 2.0)."""
    extension_state: dict[str, Any] = field(default_factory=dict)
    _hash: str | None = None
    _hash_cache: HashCache | None = None
    _in_use: int = 0

    @property
    def name(self) -> str:
        """The model's name as listed (its source's name: a file name, a folder, a hub id or a built-in)."""
        return self.source.name

    @property
    def spec(self) -> Family:
        """What the family table knows about this model's family (API 1.3)."""
        return family_spec(self.family)

    @property
    def model_hash(self) -> str | None:
        """A1111-style short hash (10 hex digits) of the model's weights, computed once."""
        if self._hash is None:
            self._hash = self._compute_hash()
        return short_hash(self._hash)

    def _compute_hash(self) -> str | None:
        source = self.source
        try:
            if source.kind == "file":
                return self._hash_cache.sha256(Path(source.location)) if self._hash_cache else None
            if source.kind in ("folder", "hub"):
                folder = Path(source.location)
                if source.kind == "hub":
                    from huggingface_hub import snapshot_download

                    folder = Path(snapshot_download(source.location, local_files_only=True,
                                                    allow_patterns=["unet/*", "transformer/*"]))
                weights = denoiser_weights_file(folder)
                if weights is not None and self._hash_cache is not None:
                    return self._hash_cache.sha256(weights)
                return None
            denoiser = getattr(self.pipeline, "unet", None) or getattr(self.pipeline, "transformer", None)
            return sha256_state_dict(denoiser.state_dict()) if denoiser is not None else None
        except Exception as exc:  # a hash is informative only; never fail a job for it
            log.warning("Could not hash %s: %s", source.name, exc)
            return None


class PipelineManager:
    """Loads pipelines by name and lends them out one job at a time per device."""

    def __init__(
        self,
        catalog: ModelCatalog,
        device: torch.device,
        precision: str = "auto",
        max_loaded: int = 1,
        hash_cache: HashCache | None = None,
        configure: Callable[[LoadedModel], None] | None = None,
    ) -> None:
        self.catalog = catalog
        self.device = device
        self.precision = precision
        self.max_loaded = max(1, int(max_loaded))
        self.hash_cache = hash_cache
        self.configure = configure
        self._loaded: "OrderedDict[str, LoadedModel]" = OrderedDict()
        self._device_locks: dict[str, threading.RLock] = {}
        self._locks_guard = threading.Lock()

    def device_lock(self, device: torch.device | None = None) -> threading.RLock:
        """The lock of one device; held for every load and every generation on it."""
        key = str(device or self.device)
        with self._locks_guard:
            return self._device_locks.setdefault(key, threading.RLock())

    def list_models(self) -> list[ModelSource]:
        return self.catalog.list()

    def loaded_names(self) -> list[str]:
        return list(self._loaded)

    @contextmanager
    def use(self, name: str) -> Iterator[LoadedModel]:
        """Hold the device and lend the loaded model ``name`` (loading it if needed)."""
        with self.device_lock():
            model = self._get_or_load(name)
            model._in_use += 1
            try:
                yield model
            finally:
                model._in_use -= 1

    def reconfigure(self) -> None:
        """Drop every loaded model not in use, so the next use applies changed settings."""
        with self.device_lock():
            for name in [n for n, m in self._loaded.items() if m._in_use == 0]:
                self._evict(name)

    def unload_all(self) -> None:
        self.reconfigure()

    def _get_or_load(self, name: str) -> LoadedModel:
        if name in self._loaded:
            self._loaded.move_to_end(name)
            return self._loaded[name]
        source = self.catalog.resolve(name)
        family = detect_family(source)
        while len(self._loaded) >= self.max_loaded:
            idle = [n for n, m in self._loaded.items() if m._in_use == 0]
            if not idle:
                break
            self._evict(idle[0])
        dtype = default_dtype(self.device, family, self.precision)
        log.info("Loading %s (%s, %s) on %s", source.name, family, dtype, self.device)
        pipeline = load_pipeline(source, family, dtype)
        model = LoadedModel(
            source=source,
            family=family,
            pipeline=pipeline,
            device=self.device,
            dtype=dtype,
            base_scheduler_config=dict(pipeline.scheduler.config),
            _hash_cache=self.hash_cache,
        )
        try:
            if self.configure is not None:
                self.configure(model)
            if not model.placement_done:
                pipeline.to(self.device)
        except BaseException:
            del model, pipeline
            self._free_memory()
            raise
        if hasattr(pipeline, "set_progress_bar_config"):
            pipeline.set_progress_bar_config(disable=False, leave=False)
        self._loaded[name] = model
        return model

    def _evict(self, name: str) -> None:
        model = self._loaded.pop(name, None)
        if model is None:
            return
        log.info("Unloading %s", name)
        model.pipeline = None
        del model
        self._free_memory()

    def _free_memory(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
