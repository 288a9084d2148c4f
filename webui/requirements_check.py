"""Whether an extension's declared ``REQUIREMENTS`` are installed, read with ``importlib.metadata``.

An extension lists what it needs as PEP 508 requirement strings, optionally followed by a
note in parentheses: ``"scipy>=1.10"``, ``"xformers (optional, CUDA only)"``. A note that
says "optional" makes a missing package a remark rather than a problem. Nothing is ever
installed here: :func:`pip_command` only spells out the command for the user.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from importlib import metadata

from packaging.requirements import InvalidRequirement, Requirement


@dataclass(frozen=True)
class RequirementStatus:
    """One declared requirement and what is installed for it."""

    text: str
    """As the extension declared it."""
    requirement: str
    """The PEP 508 part (without the note)."""
    installed: str | None
    """The installed version, None when the package is not installed."""
    satisfied: bool
    optional: bool
    note: str = ""

    def describe(self) -> str:
        """``scipy>=1.10: 1.14.1``, ``xformers: not installed (optional, CUDA only)``, ..."""
        note = f" ({self.note})" if self.note else ""
        if self.installed is None:
            return f"{self.requirement}: not installed{note}"
        if not self.satisfied:
            return f"{self.requirement}: {self.installed} installed, does not match{note}"
        return f"{self.requirement}: {self.installed}{note}"


def check_requirement(text: str) -> RequirementStatus:
    """The status of one declared requirement."""
    spec, _, rest = str(text).partition(" (")
    note = rest.rstrip(")").strip() if rest else ""
    optional = "optional" in note.lower()
    try:
        requirement = Requirement(spec.strip())
    except InvalidRequirement:
        return RequirementStatus(text=text, requirement=spec.strip(), installed=None, satisfied=False,
                                 optional=optional, note=note or "not a valid requirement")
    try:
        installed = metadata.version(requirement.name)
    except metadata.PackageNotFoundError:
        installed = None
    satisfied = installed is not None and (not requirement.specifier
                                           or requirement.specifier.contains(installed, prereleases=True))
    return RequirementStatus(text=text, requirement=str(requirement), installed=installed, satisfied=satisfied,
                             optional=optional, note=note)


def missing(statuses: list[RequirementStatus]) -> list[RequirementStatus]:
    """The required (not optional) requirements that are not satisfied."""
    return [status for status in statuses if not status.satisfied and not status.optional]


def pip_command(statuses: list[RequirementStatus]) -> list[str]:
    """The pip command that installs ``statuses`` into the running interpreter's environment."""
    return [sys.executable, "-m", "pip", "install", *[status.requirement for status in statuses]]


def pip_command_text(statuses: list[RequirementStatus]) -> str:
    """:func:`pip_command` as one line to copy into a shell."""
    return " ".join(shlex.quote(part) for part in pip_command(statuses))
