"""Easel's REST API: AUTOMATIC1111's ``/sdapi/v1`` and Easel's own ``/easel/v1``.

:func:`create_api_router` gathers the routes of one app behind its API credentials
(HTTP Basic; every route, the LoRA ones included). :class:`ApiOptions` says how it is
served: credentials, the body-size limit, the flags ``cmd-flags`` reports. It is served
either next to the Gradio UI (``--api``: :func:`install_api` adds the routes to Gradio's
FastAPI app, :func:`api_middleware` goes into its ``app_kwargs``) or alone
(``--nowebui``: :func:`create_api_app`). Module map:

* :mod:`webui.rest.easel_v1` - Easel's job API (any task, persisted in SQLite by
  :mod:`webui.job_store`, webhooks) and the extensions' routes (``register_api_routes``)
* :mod:`webui.rest.sdapi` - the A1111 routes; :mod:`webui.rest.a1111_jobs` - A1111 bodies
  as Easel jobs and results as A1111 answers; :mod:`webui.rest.sdapi_models` - A1111's shapes
* :mod:`webui.rest.auth` - credentials; :mod:`webui.rest.limits` - body and image size limits;
  :mod:`webui.rest.errors` - A1111's error body and status codes
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Depends, FastAPI
from starlette.middleware import Middleware

from webui.rest.auth import BasicAuth
from webui.rest.limits import DEFAULT_MAX_BODY_BYTES, BodySizeLimit

if TYPE_CHECKING:
    from webui.context import EaselContext

API_PREFIXES = ("/sdapi/", "/easel/")


@dataclass
class ApiOptions:
    """How the REST API is served."""

    credentials: list[tuple[str, str]] = field(default_factory=list)
    """``user, password`` pairs of ``--api-auth`` / ``--api-auth-path``; empty: no authentication."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    cmd_flags: dict[str, Any] = field(default_factory=dict)
    """What ``GET /sdapi/v1/cmd-flags`` reports (credentials already hidden)."""


def create_api_router(context: "EaselContext", options: ApiOptions) -> APIRouter:
    """Every API route of ``context``, behind ``options.credentials``."""
    from webui.rest import easel_v1, sdapi

    auth = BasicAuth(tuple(options.credentials))
    router = APIRouter(dependencies=[Depends(auth)])
    router.include_router(sdapi.create_router(context, options.cmd_flags))
    router.include_router(easel_v1.create_router(context))  # extensions' routes (register_api_routes) included
    return router


def api_middleware(options: ApiOptions) -> list[Middleware]:
    """Middleware the API needs on the app that serves it (the body-size limit of its paths)."""
    return [Middleware(BodySizeLimit, max_bytes=options.max_body_bytes, prefixes=API_PREFIXES)]


def install_api(app: FastAPI, context: "EaselContext", options: ApiOptions) -> None:
    """Add the API routes to a running app (Gradio's); its middleware must have been given at creation."""
    app.include_router(create_api_router(context, options))
    app.openapi_schema = None  # the document is made again with the new routes


def create_api_app(context: "EaselContext", options: ApiOptions) -> FastAPI:
    """The API alone (``--nowebui``), with its OpenAPI document at ``/openapi.json`` and ``/docs``."""
    from webui import __version__

    app = FastAPI(title="Easel API", version=__version__, middleware=api_middleware(options))
    app.include_router(create_api_router(context, options))
    return app
