"""Finding, loading and calling extensions, with every failure isolated.

Three sources of extensions:

* built-ins: the folders of the repository's ``extensions/`` named in ``BUILTIN_EXTENSIONS``;
* drop-in folders: any other folder with an ``__init__.py`` under ``extensions/`` or an
  extra extensions folder;
* installed packages that declare an entry point in the ``easel.extensions`` group.

An extension that fails to import, declares an incompatible API version, or raises in a
hook is recorded in :attr:`PluginHost.failures` (shown on the Extensions page) and
skipped; the app keeps running. :class:`webui.api.ExtensionError` is the exception for
refusing a request with a message for the user: it is passed on, not swallowed.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import pluggy

from webui import hookspecs
from webui.errors import ExtensionError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "easel.extensions"
BUILTIN_EXTENSIONS = ("txt2img", "img2img", "extensions_page", "background", "lora", "train", "png_info", "presets",
                      "attention", "vae", "offload", "quantization", "speed")
API_VERSION = "1.4"


@dataclass
class ExtensionInfo:
    """What the Extensions page shows about one extension."""

    name: str
    origin: str  # builtin, folder or package
    location: str
    status: str = "loaded"  # loaded, failed, disabled
    description: str = ""
    requirements: list[str] = field(default_factory=list)
    error: str = ""


@dataclass
class ExtensionFailure:
    """One failure of one extension: at import time or inside a hook."""

    extension: str
    stage: str  # "import" or the hook name
    message: str
    traceback: str


def api_version_compatible(required: str | None) -> bool:
    """An extension asking for API ``X.Y`` loads when X equals ours and Y is not newer."""
    if not required:
        return True
    try:
        want_major, want_minor = (int(part) for part in str(required).split(".")[:2])
    except ValueError:
        return False
    have_major, have_minor = (int(part) for part in API_VERSION.split("."))
    return want_major == have_major and want_minor <= have_minor


class PluginHost:
    """The pluggy plugin manager plus loading, bookkeeping and failure isolation."""

    def __init__(self, disabled: set[str] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.extensions: dict[str, ExtensionInfo] = {}
        self.failures: list[ExtensionFailure] = []
        self.disabled = set(disabled or ())

    # ----- loading -------------------------------------------------------------------
    def load_all(self, builtin_dir: Path, extra_dirs: list[Path] = (), entry_points: bool = True) -> None:
        """Load built-ins, drop-in folders and entry-point packages, in that order."""
        builtin_dir = Path(builtin_dir)
        for name in BUILTIN_EXTENSIONS:
            folder = builtin_dir / name
            if folder.is_dir():
                self.load_folder(folder, origin="builtin")
        for directory in [builtin_dir, *map(Path, extra_dirs)]:
            if not directory.is_dir():
                continue
            for folder in sorted(directory.iterdir()):
                if folder.name in BUILTIN_EXTENSIONS and directory == builtin_dir:
                    continue
                if folder.is_dir() and not folder.name.startswith((".", "_")) and (folder / "__init__.py").is_file():
                    self.load_folder(folder, origin="folder")
        if entry_points:
            for entry_point in metadata.entry_points(group=ENTRY_POINT_GROUP):
                self._load(entry_point.name, "package", entry_point.value, entry_point.load)

    def load_folder(self, folder: Path, origin: str = "folder") -> None:
        """Import ``folder/__init__.py`` as a package and register it."""
        folder = Path(folder)
        name = folder.name

        def do_import() -> ModuleType:
            module_name = f"easel_extensions.{name}"
            # ``from . import sibling`` inside an extension fails with "No module named
            # 'easel_extensions'" unless the parent package exists (``from .sibling import x``
            # works without it): register an empty namespace for it.
            if "easel_extensions" not in sys.modules:
                parent = ModuleType("easel_extensions")
                parent.__path__ = []
                sys.modules["easel_extensions"] = parent
            spec = importlib.util.spec_from_file_location(
                module_name, folder / "__init__.py", submodule_search_locations=[str(folder)]
            )
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except BaseException:
                sys.modules.pop(module_name, None)
                raise
            return module

        self._load(name, origin, str(folder), do_import)

    def register_object(self, name: str, plugin: Any, origin: str = "package") -> None:
        """Register an already imported extension object (used by tests and embedding apps)."""
        self._load(name, origin, repr(plugin), lambda: plugin)

    def _load(self, name: str, origin: str, location: str, importer) -> None:
        if name in self.extensions:
            log.warning("Extension %s from %s ignored: an extension of that name is already loaded", name, location)
            return
        info = ExtensionInfo(name=name, origin=origin, location=location)
        self.extensions[name] = info
        if name in self.disabled:
            info.status = "disabled"
            return
        try:
            plugin = importer()
            doc_lines = (getattr(plugin, "__doc__", None) or "").strip().splitlines()
            info.description = doc_lines[0] if doc_lines else ""
            info.requirements = list(getattr(plugin, "REQUIREMENTS", []) or [])
            required = getattr(plugin, "EASEL_API_VERSION", None)
            if not api_version_compatible(required):
                raise ExtensionError(f"needs extension API {required}, this Easel provides {API_VERSION}")
            self.pm.register(plugin, name=name)
        except BaseException as exc:  # noqa: BLE001 - any failure of a third-party import is isolated
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self._record(name, "import", exc)

    # ----- calling -------------------------------------------------------------------
    def call(self, hook_name: str, **kwargs: Any) -> list[Any]:
        """Call every implementation of a hook; failures are recorded and skipped.

        Returns the non-None results in pluggy's call order. ExtensionError propagates.
        """
        hook = getattr(self.pm.hook, hook_name)
        results = []
        for impl in reversed(hook.get_hookimpls()):
            extension = self.pm.get_name(impl.plugin) or "?"
            if self.extensions.get(extension) and self.extensions[extension].status == "failed":
                continue
            arguments = {name: kwargs[name] for name in impl.argnames if name in kwargs}
            try:
                result = impl.function(**arguments)
            except ExtensionError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the extension, keep serving
                self._record(extension, hook_name, exc, disable=False)
                continue
            if result is not None:
                results.append(result)
        return results

    def report_failure(self, name: str, stage: str, exc: BaseException) -> None:
        """Record a failure that happened outside a hook call (e.g. while a tab rendered)."""
        self._record(name, stage, exc, disable=False)

    def _record(self, name: str, stage: str, exc: BaseException, disable: bool = True) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.error("Extension %s failed in %s: %s", name, stage, message)
        self.failures.append(
            ExtensionFailure(extension=name, stage=stage, message=message, traceback=traceback.format_exc())
        )
        info = self.extensions.get(name)
        if info is not None:
            info.error = f"{stage}: {message}"
            if disable:
                info.status = "failed"
