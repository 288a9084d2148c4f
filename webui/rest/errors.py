"""Error answers of the REST API: AUTOMATIC1111's body, honest status codes, no stack traces.

Every API route uses :class:`ApiRoute`, which turns what a handler raises into
``{"error": <type>, "detail": <message>, "body": "", "errors": <message>}`` (the body
A1111 answers with) and a status code that says what went wrong:

=====  ==================================================================================
422    a bad field, an impossible size, an image that cannot be read, a refused option
404    an unknown model, sampler, LoRA, job or file
401    missing or wrong credentials (with ``WWW-Authenticate``)
413    a request body or an image above the limits
503    the queue is full (with ``Retry-After``)
500    a real fault of the server only; the details go to the log, never into the body
=====  ==================================================================================
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException  # FastAPI's HTTPException is a subclass

from webui.errors import EaselError, ExtensionError, GenerationError
from webui.jobs import RequestError
from webui.pipelines.schedulers import UnknownSamplerError, UnsupportedScheduleTypeError
from webui.pipelines.sources import UnknownModelError
from webui.queue import QueueFullError

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5


class NotFoundError(EaselError, LookupError):
    """Something named in a request does not exist (a LoRA, a job, an image): 404."""


class PayloadTooLargeError(EaselError):
    """A request body or an image above the server's limits: 413."""


def error_response(status: int, error: str, detail: Any, headers: dict[str, str] | None = None) -> JSONResponse:
    """A1111's error body with ``status``."""
    text = detail if isinstance(detail, str) else ""
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": error, "detail": jsonable_encoder(detail), "body": "", "errors": text})


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Pydantic's errors without the echoed input or exception objects (bodies may be huge or odd)."""
    cleaned = []
    for item in exc.errors():
        cleaned.append({"loc": [str(part) for part in item.get("loc", ())], "msg": str(item.get("msg", "")),
                        "type": str(item.get("type", ""))})
    return cleaned


def status_for(exc: BaseException) -> int:
    """The status code an Easel error stands for."""
    if isinstance(exc, (UnknownModelError, UnknownSamplerError, NotFoundError)):
        return 404
    if isinstance(exc, PayloadTooLargeError):
        return 413
    if isinstance(exc, QueueFullError):
        return 503
    if isinstance(exc, (RequestError, UnsupportedScheduleTypeError, ExtensionError)):
        return 422
    if isinstance(exc, GenerationError):
        return 500
    return 500


def exception_response(exc: BaseException) -> JSONResponse:
    """The answer for an exception a route raised."""
    if isinstance(exc, RequestValidationError):
        return error_response(422, "RequestValidationError", _validation_detail(exc))
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, "HTTPException", exc.detail, headers=exc.headers)
    if isinstance(exc, (EaselError, UnknownSamplerError, UnsupportedScheduleTypeError)):
        status = status_for(exc)
        headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
        message = str(exc) or type(exc).__name__
        if status == 500:
            log.error("API job failed: %s", message)
        return error_response(status, type(exc).__name__, message, headers=headers)
    log.exception("Unexpected error in an API route", exc_info=exc)
    return error_response(500, "InternalServerError",
                          "The server failed on this request; the details are in the server's log")


class ApiRoute(APIRoute):
    """An API route whose errors are answered with A1111's body (see the module docstring)."""

    def get_route_handler(self) -> Callable:
        handler = super().get_route_handler()

        async def answer(request: Request):
            try:
                return await handler(request)
            except Exception as exc:  # noqa: BLE001 - every error becomes a clean answer
                return exception_response(exc)

        return answer
