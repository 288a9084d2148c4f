"""Size limits of API requests: bodies (413 before they are parsed) and images (before they are decoded).

:class:`BodySizeLimit` is ASGI middleware for the API's path prefixes: a declared
``Content-Length`` above the limit is answered 413 at once; otherwise the body is read up
to the limit (a chunked body that goes beyond it is answered 413 too) and handed on.
:func:`decode_image` reads a base64 image (raw or a ``data:`` URL) and refuses, with
413 / 422, an encoded size or pixel count above the limits before Pillow decodes the
pixels into memory.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
from typing import Any

from webui.jobs import RequestError
from webui.rest.errors import PayloadTooLargeError

DEFAULT_MAX_BODY_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_IMAGE_BYTES = 48 * 1024 * 1024


class BodySizeLimit:
    """ASGI middleware: request bodies under ``prefixes`` at most ``max_bytes`` long, else 413."""

    def __init__(self, app: Any, max_bytes: int = DEFAULT_MAX_BODY_BYTES,
                 prefixes: tuple[str, ...] = ("/sdapi/", "/easel/")) -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.prefixes = prefixes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope.get("type") != "http" or not str(scope.get("path", "")).startswith(self.prefixes):
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            too_big = declared is not None and int(declared) > self.max_bytes
        except ValueError:
            too_big = False
        if too_big:
            await self._refuse(send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self._refuse(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        delivered = False

        async def replay() -> dict:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Any) -> None:
        detail = f"The request body is larger than this server accepts ({self.max_bytes // (1024 * 1024)} MiB)"
        payload = json.dumps({"error": "PayloadTooLargeError", "detail": detail, "body": "", "errors": detail})
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload.encode()})


def decode_image(value: str, *, max_side: int, field: str = "image",
                 max_bytes: int = DEFAULT_MAX_IMAGE_BYTES, upright: bool = True) -> Any:
    """A PIL image from base64 text (raw, or a ``data:image/...;base64,`` URL), checked before decoding.

    Raises :class:`PayloadTooLargeError` (413) for more encoded bytes than ``max_bytes`` and
    :class:`RequestError` (422) for text that is not base64 of an image, or an image whose
    sides exceed twice ``max_side`` (it is read from the header, before the pixels).
    ``upright``: apply the EXIF orientation (off to read the file's own metadata as it is).
    """
    from PIL import Image, ImageOps

    if not isinstance(value, str) or not value.strip():
        raise RequestError(f"{field}: expected a base64-encoded image")
    text = value.strip()
    if text.startswith("data:"):
        header, sep, text = text.partition(",")
        if not sep or ";base64" not in header:
            raise RequestError(f"{field}: a data: URL must be base64-encoded (data:image/png;base64,...)")
    if len(text) * 3 // 4 > max_bytes:
        raise PayloadTooLargeError(f"{field}: the image is larger than {max_bytes // (1024 * 1024)} MiB")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), validate=False)
    except (binascii.Error, ValueError):
        raise RequestError(f"{field}: not valid base64") from None
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for broken files
        raise RequestError(f"{field}: the image could not be read ({type(exc).__name__})") from None
    limit = 2 * int(max_side)
    if image.width > limit or image.height > limit:
        raise RequestError(f"{field}: {image.width}x{image.height} is larger than this server accepts "
                           f"(at most {limit} pixels a side)")
    try:
        image.load()
    except Exception as exc:  # noqa: BLE001
        raise RequestError(f"{field}: the image could not be read ({type(exc).__name__}: {exc})") from None
    return ImageOps.exif_transpose(image) if upright else image  # a phone photo stands as it was taken
