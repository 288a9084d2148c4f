"""HTTP Basic authentication for the REST API, and credentials from flags or files.

``--api-auth user:pass[,user2:pass2]`` (or ``--api-auth-path FILE``) protects every API
route. Credentials are compared in constant time, every pair is checked whatever the
outcome (no early exit that would tell a valid user name by timing). Without API
credentials every request passes, and an empty ``Authorization: Basic `` header (some
clients send one) is ignored, as AUTOMATIC1111 does.
"""

from __future__ import annotations

import base64
import binascii
import secrets
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, Request


class CredentialsError(ValueError):
    """Credentials given on the command line or in a file that are not ``user:password`` pairs."""


def parse_credentials(text: str | None, source: str = "--api-auth") -> list[tuple[str, str]]:
    """``user:pass`` pairs separated by commas or new lines; a password may contain ``:``."""
    pairs: list[tuple[str, str]] = []
    for item in (text or "").replace("\n", ",").split(","):
        item = item.strip()
        if not item:
            continue
        user, sep, password = item.partition(":")
        if not sep or not user or not password:
            raise CredentialsError(f"{source} expects USER:PASSWORD pairs separated by commas")
        pairs.append((user, password))
    return pairs


def read_credentials(value: str | None, path: str | Path | None, flag: str) -> list[tuple[str, str]]:
    """The pairs of ``--<flag>`` and of ``--<flag>-path`` (a file, one or more pairs per line) together."""
    pairs = parse_credentials(value, f"--{flag}")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise CredentialsError(f"--{flag}-path: cannot read {path}: {exc.strerror or exc}") from None
        pairs += parse_credentials(text, f"--{flag}-path {path}")
    return pairs


@dataclass(frozen=True)
class BasicAuth:
    """A FastAPI dependency: 401 unless the request carries one of ``credentials`` (none: open)."""

    credentials: tuple[tuple[str, str], ...] = ()
    realm: str = "Easel API"

    @property
    def enabled(self) -> bool:
        return bool(self.credentials)

    def check(self, user: str, password: str) -> bool:
        """Whether the pair is one of the configured ones, compared in constant time."""
        user_bytes, password_bytes = user.encode("utf-8"), password.encode("utf-8")
        matched = False
        for known_user, known_password in self.credentials:
            same_user = secrets.compare_digest(user_bytes, known_user.encode("utf-8"))
            same_password = secrets.compare_digest(password_bytes, known_password.encode("utf-8"))
            matched |= same_user and same_password
        return matched

    def __call__(self, request: Request) -> None:
        if not self.enabled:
            return  # open API; an empty "Authorization: Basic " header is simply ignored
        pair = _basic_credentials(request.headers.get("authorization", ""))
        if pair is None or not self.check(*pair):
            raise HTTPException(status_code=401, detail="Incorrect username or password",
                                headers={"WWW-Authenticate": f'Basic realm="{self.realm}"'})


def _basic_credentials(header: str) -> tuple[str, str] | None:
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded.strip():
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    return (user, password) if sep else None
