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

Hooks are called by pluggy itself (wrappers, ``firstresult``, ``tryfirst``/``trylast`` work as
pluggy documents); each implementation is wrapped so that its failure is recorded once per
(extension, hook) pair, with a count, and the call goes on with the others.

Hooks get the narrow :class:`webui.extension_context.ExtensionContext` as ``context`` (API 2.0),
whatever the caller passed. An extension that declares API 1.x (or no version) is loaded
through the 1.x adapter: its hooks, tabs, controls and job tasks get
:class:`webui.extension_context.LegacyContext` instead, which still answers the internals 1.x
reached, with a ``DeprecationWarning``. Any other version is refused with the reason.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import sys
import threading
import traceback
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Generator

import pluggy

from webui import hookspecs
from webui.errors import ExtensionError
from webui.extension_context import adapt_arguments

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "easel.extensions"
BUILTIN_EXTENSIONS = ("txt2img", "img2img", "extensions_page", "models_page", "background", "lora", "train",
                      "png_info", "presets", "attention", "vae", "offload", "quantization", "speed")
API_VERSION = "2.0"
#: The older major versions still loaded, through the adapter of :mod:`webui.extension_context`.
ADAPTED_MAJOR_VERSIONS = (1,)

#: What a ``@hookimpl(wrapper=True)`` function returns: a generator that yields once, receives the
#: result and returns it (possibly changed).
WrapperGenerator = Generator[None, Any, Any]


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
    version: str = ""
    """The extension's own version: its package's version, else its module's ``__version__``."""
    api_version: str = ""
    """The ``EASEL_API_VERSION`` it declares (empty: none declared)."""
    adapted: bool = False
    """Loaded through the API 1.x adapter (it declares 1.x, or no version)."""


@dataclass
class ExtensionFailure:
    """One failure of one extension: at import time or inside a hook."""

    extension: str
    stage: str  # "import", "render" or the hook name
    message: str
    """The first failure's exception type and message."""
    traceback: str
    """The first failure's traceback (later ones only add to ``count``)."""
    count: int = 1
    """How many times this extension failed in this stage."""
    last_message: str = ""
    """The latest failure's message (empty while there was only one)."""

    def __str__(self) -> str:
        times = f" ({self.count} times)" if self.count > 1 else ""
        return f"{self.stage}: {self.message}{times}"


def _extension_version(plugin: Any, origin: str) -> str:
    """A package's installed version, else the module's ``__version__``, else "" (built-ins: Easel's)."""
    if origin == "builtin":
        from webui import __version__

        return __version__
    module_name = getattr(plugin, "__name__", "") or ""
    distributions = metadata.packages_distributions().get(module_name.split(".")[0], [])
    for distribution in distributions:
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return str(getattr(plugin, "__version__", "") or "")


def api_support(required: str | None) -> tuple[str | None, str]:
    """How an extension declaring ``EASEL_API_VERSION = required`` loads: ``("current", "")``,
    ``("adapted", "")`` (API 1.x, or nothing declared: through the 1.x adapter) or
    ``(None, reason)`` when it is refused."""
    if not required:
        return "adapted", ""
    have_major, have_minor = (int(part) for part in API_VERSION.split("."))
    try:
        want_major, want_minor = (int(part) for part in str(required).split(".")[:2])
    except ValueError:
        return None, f"declares EASEL_API_VERSION {required!r}, which is not MAJOR.MINOR"
    if want_major == have_major and want_minor <= have_minor:
        return "current", ""
    if want_major in ADAPTED_MAJOR_VERSIONS:
        return "adapted", ""
    if want_major == have_major:
        return None, f"needs extension API {required}, this Easel provides {API_VERSION}: update Easel"
    return None, (f"needs extension API {required}, this Easel provides {API_VERSION} (and adapts "
                  f"{', '.join(f'{major}.x' for major in ADAPTED_MAJOR_VERSIONS)}): "
                  + ("update Easel" if want_major > have_major else "this API version is no longer supported"))


def api_version_compatible(required: str | None) -> bool:
    """Whether an extension declaring API ``required`` loads (directly or through the 1.x adapter)."""
    return api_support(required)[0] is not None


def public_context(value: Any) -> Any:
    """What a hook gets for a ``context`` argument: the app's extension facade (API 2.0)."""
    return getattr(value, "for_extensions", value)


class PluginHost:
    """The pluggy plugin manager plus loading, bookkeeping and failure isolation."""

    def __init__(self, disabled: set[str] | None = None) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.extensions: dict[str, ExtensionInfo] = {}
        self.failures: list[ExtensionFailure] = []
        """One entry per failing (extension, stage) pair, in the order they first failed."""
        self._failures_by_key: dict[tuple[str, str], ExtensionFailure] = {}
        self._failure_lock = threading.Lock()
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
            info.version = _extension_version(plugin, origin)
            required = getattr(plugin, "EASEL_API_VERSION", None)
            info.api_version = str(required or "")
            support, reason = api_support(required)
            if support is None:
                raise ExtensionError(reason)
            info.adapted = support == "adapted"
            self.pm.register(plugin, name=name)
            try:
                self._isolate(name, plugin, adapted=info.adapted)
            except BaseException:
                self.pm.unregister(plugin, name=name)
                raise
        except BaseException as exc:  # noqa: BLE001 - any failure of a third-party import is isolated
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise
            self._record(name, "import", exc)

    # ----- calling -------------------------------------------------------------------
    def call(self, hook_name: str, **kwargs: Any) -> Any:
        """Call hook ``hook_name`` through pluggy, with every implementation isolated.

        Pluggy does the calling, so ``tryfirst``/``trylast``, ``@hookimpl(wrapper=True)``
        wrappers and the spec's ``firstresult`` all behave as pluggy documents. Returns what
        pluggy returns: the list of non-None results in call order, or for a ``firstresult``
        hook the first non-None answer (None when there is none). An implementation (or a
        wrapper) that raises is recorded in :attr:`failures` and skipped: the call goes on with
        the other extensions as if the failing one had returned None (a failing wrapper passes
        the result through unchanged). :class:`webui.api.ExtensionError` propagates.
        """
        if "context" in kwargs:
            kwargs["context"] = public_context(kwargs["context"])
        return getattr(self.pm.hook, hook_name)(**kwargs)

    def is_firstresult(self, hook_name: str) -> bool:
        """Whether hook ``hook_name`` stops at the first non-None answer (declared in its spec)."""
        hook = getattr(self.pm.hook, hook_name)
        return bool(hook.spec and hook.spec.opts.get("firstresult"))

    def _isolate(self, extension: str, plugin: Any, adapted: bool = False) -> None:
        """Wrap each of ``plugin``'s hook implementations so that a failure is recorded, not raised.

        pluggy calls ``HookImpl.function``; replacing it with an isolating wrapper keeps pluggy's
        own calling (order, wrappers, firstresult) and adds the failure isolation around each
        implementation; for an ``adapted`` (API 1.x) extension it also hands the implementation
        the 1.x view of its arguments (:func:`webui.extension_context.adapt_arguments`). Old-style ``hookwrapper=True`` implementations are refused: their
        failures cannot be isolated from the other extensions' (they get pluggy's ``Result``).
        """
        for caller in self.pm.get_hookcallers(plugin) or ():
            for impl in caller.get_hookimpls():
                if impl.plugin is not plugin:
                    continue
                if impl.hookwrapper:
                    raise ExtensionError(
                        f"{caller.name}: old-style @hookimpl(hookwrapper=True) is not supported; "
                        "use @hookimpl(wrapper=True) (a generator that yields once and returns the result)"
                    )
                function = impl.function
                if adapted:
                    function = adapt_arguments(function, tuple(impl.argnames))
                if impl.wrapper:
                    impl.function = self._isolated_wrapper(extension, caller.name, function)
                else:
                    impl.function = self._isolated_function(extension, caller.name, function)

    def _isolated_function(self, extension: str, hook_name: str, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function`` that records its failure and answers None instead of raising."""

        @functools.wraps(function)
        def isolated(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except ExtensionError:
                raise
            except Exception as exc:  # noqa: BLE001 - isolate the extension, keep serving
                self._record(extension, hook_name, exc, disable=False)
                return None

        return isolated

    def _isolated_wrapper(self, extension: str, hook_name: str,
                          function: Callable[..., WrapperGenerator]) -> Callable[..., WrapperGenerator]:
        """A ``wrapper=True`` implementation that passes the result through unchanged when it fails.

        The wrapper runs as pluggy defines it (code before its ``yield``, the other
        implementations, then the code after it with the result or their exception). If the
        wrapper itself raises (before or after its ``yield``, or yields twice), the failure is
        recorded and the call continues as if the wrapper were not there.
        """

        def failed(exc: BaseException) -> None:
            self._record(extension, hook_name, exc, disable=False)

        @functools.wraps(function)
        def isolated(*args: Any, **kwargs: Any) -> WrapperGenerator:
            try:
                inner = function(*args, **kwargs)
                next(inner)
            except ExtensionError:
                raise
            except StopIteration:
                failed(RuntimeError("the wrapper returned without yielding"))
                return (yield)
            except Exception as exc:  # noqa: BLE001 - a broken wrapper must not break the others
                failed(exc)
                return (yield)
            try:
                result = yield
            except BaseException as error:  # an implementation inside the wrapper raised: the wrapper sees it
                try:
                    inner.throw(error)
                except StopIteration as stop:  # the wrapper handled it and returned a result
                    return stop.value
                except BaseException as raised:
                    if raised is error or isinstance(raised, ExtensionError) or not isinstance(raised, Exception):
                        raise
                    failed(raised)
                    raise error from None
                failed(RuntimeError("the wrapper yielded more than once"))
                inner.close()
                raise
            try:
                inner.send(result)
            except StopIteration as stop:
                return stop.value
            except ExtensionError:
                raise
            except Exception as exc:  # noqa: BLE001
                failed(exc)
                return result
            failed(RuntimeError("the wrapper yielded more than once"))
            inner.close()
            return result

        return isolated

    def report_failure(self, name: str, stage: str, exc: BaseException) -> None:
        """Record a failure that happened outside a hook call (e.g. while a tab rendered)."""
        self._record(name, stage, exc, disable=False)

    def failure_count(self, name: str, stage: str) -> int:
        """How many times extension ``name`` failed in ``stage`` (a hook name, ``import``, ``render``)."""
        failure = self._failures_by_key.get((name, stage))
        return failure.count if failure is not None else 0

    def _record(self, name: str, stage: str, exc: BaseException, disable: bool = True) -> None:
        """Record one failure: the first of an (extension, stage) pair in full, later ones as a count."""
        message = f"{type(exc).__name__}: {exc}"
        with self._failure_lock:
            failure = self._failures_by_key.get((name, stage))
            if failure is None:
                failure = ExtensionFailure(extension=name, stage=stage, message=message,
                                           traceback="".join(traceback.format_exception(exc)))
                self._failures_by_key[(name, stage)] = failure
                self.failures.append(failure)
                log.error("Extension %s failed in %s: %s", name, stage, message, exc_info=exc)
            else:
                failure.count += 1
                failure.last_message = message
                log.debug("Extension %s failed in %s again (%d times): %s", name, stage, failure.count, message)
            info = self.extensions.get(name)
            if info is not None:
                info.error = str(failure)
                if disable:
                    info.status = "failed"
