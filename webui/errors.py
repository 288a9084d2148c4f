"""Exceptions whose messages are meant for the user (shown in the UI and the API)."""

from __future__ import annotations


class EaselError(Exception):
    """Base class of errors Easel reports to the user instead of crashing."""


class ExtensionError(EaselError):
    """Raised by an extension to refuse something with a message for the user."""


class GenerationError(EaselError):
    """A generation failed; the message says why and, where it can, what would help."""
