"""Settings and last-used UI values, persisted in one JSON file in the data folder.

Writes are atomic (temporary file + ``os.replace``), so a crash never leaves a
half-written config; a config file that cannot be read is kept aside as
``config.json.broken`` and the defaults are used, with a warning, instead of failing.
"""

from __future__ import annotations

import contextvars
import json
import logging
import os
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

SETTING_KINDS = ("bool", "int", "float", "choice", "text")


@dataclass
class Setting:
    """One user setting declared by an extension (see the ``register_settings`` hook)."""

    key: str
    label: str
    default: Any
    kind: str = "text"
    choices: list[Any] = field(default_factory=list)
    minimum: float | None = None
    maximum: float | None = None
    help: str = ""
    section: str = "General"

    def __post_init__(self) -> None:
        if self.kind not in SETTING_KINDS:
            raise ValueError(f"setting {self.key!r}: kind must be one of {SETTING_KINDS}, got {self.kind!r}")

    def coerce(self, value: Any) -> Any:
        """Turn a stored or submitted value into this setting's type, or raise ValueError."""
        if self.kind == "bool":
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            return bool(value)
        if self.kind in ("int", "float"):
            number = int(value) if self.kind == "int" else float(value)
            if self.minimum is not None and number < self.minimum:
                raise ValueError(f"{self.label} must be at least {self.minimum}")
            if self.maximum is not None and number > self.maximum:
                raise ValueError(f"{self.label} must be at most {self.maximum}")
            return number
        if self.kind == "choice":
            if value not in self.choices:
                raise ValueError(f"{self.label} must be one of {', '.join(map(str, self.choices))}")
            return value
        return "" if value is None else str(value)


class SettingsStore:
    """Registered settings plus their saved values, and a free-form "last used" area."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        self._specs: dict[str, Setting] = {}
        self._values: dict[str, Any] = {}
        self._last_used: dict[str, Any] = {}
        self._overrides: dict[str, Any] = {}
        self._job_values: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
            f"easel_job_settings_{id(self)}", default={})
        """Values that apply only to the job running in this thread (see :meth:`for_this_job`)."""
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            if not isinstance(data, dict):
                raise ValueError("top level is not an object")
        except (OSError, ValueError) as exc:
            broken = self.path.with_name(self.path.name + ".broken")
            log.warning("Could not read %s (%s); keeping it as %s and using defaults", self.path, exc, broken)
            try:
                os.replace(self.path, broken)
            except OSError:
                pass
            return
        self._values = dict(data.get("settings", {}))
        self._last_used = dict(data.get("last_used", {}))

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = json.dumps({"settings": self._values, "last_used": self._last_used}, indent=2, default=str)
        fd, tmp = tempfile.mkstemp(prefix=".config-", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(payload)
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def register(self, setting: Setting) -> None:
        """Declare a setting; a duplicate key from another extension is an error."""
        with self._lock:
            if setting.key in self._specs:
                raise ValueError(f"setting {setting.key!r} is registered twice")
            self._specs[setting.key] = setting

    @property
    def specs(self) -> list[Setting]:
        with self._lock:
            return list(self._specs.values())

    def override(self, key: str, value: Any) -> None:
        """Use ``value`` for ``key`` during this run without saving it (command-line flags).

        Saving the setting later (``set``/``update``) replaces the override.
        """
        with self._lock:
            self._overrides[key] = value

    @contextmanager
    def for_this_job(self, values: dict[str, Any]) -> Iterator[None]:
        """Within the block, ``get`` returns ``values`` first, in this thread only; nothing is saved.

        The out-of-memory retry runs a job's next attempt under the lower-memory values the
        ``out_of_memory`` hooks asked for, so that one job changes and every later job (and every
        other thread, e.g. the Settings tab) still sees the app's own settings.
        """
        token = self._job_values.set({**self._job_values.get(), **values})
        try:
            yield
        finally:
            self._job_values.reset(token)

    def get(self, key: str, default: Any = None) -> Any:
        """The job's value (:meth:`for_this_job`), else the override, else the saved value, else the
        declared default, else ``default``."""
        with self._lock:
            spec = self._specs.get(key)
            job_values = self._job_values.get()
            if key in job_values:
                value = job_values[key]
                return spec.coerce(value) if spec is not None else value
            if key in self._overrides:
                value = self._overrides[key]
                return spec.coerce(value) if spec is not None else value
            if key in self._values:
                if spec is None:
                    return self._values[key]
                try:
                    return spec.coerce(self._values[key])
                except (TypeError, ValueError):
                    log.warning("Ignoring invalid saved value for %s: %r", key, self._values[key])
            if spec is not None:
                return spec.default
            return default

    def set(self, key: str, value: Any) -> Any:
        """Validate and save one setting; returns the stored value."""
        with self._lock:
            spec = self._specs.get(key)
            if spec is not None:
                value = spec.coerce(value)
            self._values[key] = value
            self._overrides.pop(key, None)
            self._save()
            return value

    def update(self, values: dict[str, Any]) -> None:
        """Validate all, then save all (nothing is written when one is invalid)."""
        with self._lock:
            checked = {}
            for key, value in values.items():
                spec = self._specs.get(key)
                checked[key] = spec.coerce(value) if spec is not None else value
            self._values.update(checked)
            for key in checked:
                self._overrides.pop(key, None)
            self._save()

    def saved_values(self) -> dict[str, Any]:
        """A copy of the saved settings (not the command-line overrides, a job's own values or the
        last-used UI values): what a Ray worker takes over from the front with each job."""
        with self._lock:
            return dict(self._values)

    def last_used(self, scope: str) -> dict[str, Any]:
        """Last-used UI values of one tab (empty when none are saved)."""
        with self._lock:
            value = self._last_used.get(scope, {})
            return dict(value) if isinstance(value, dict) else {}

    def remember(self, scope: str, values: dict[str, Any]) -> None:
        """Save the last-used UI values of one tab."""
        with self._lock:
            self._last_used[scope] = dict(values)
            self._save()
