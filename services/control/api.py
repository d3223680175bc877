"""The HTTP API and pages. ``create_app`` takes its collaborators, for tests.

This module holds health, status and config; ``routes`` the box's other endpoints, ``pages``
the two pages and the captions stream, ``security`` who may do what.

Every response has a pydantic model, so ``/openapi.json`` describes what really comes back.
Errors are JSON too: ``{"error": ..., "problems": [...]}`` with one line per problem.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Body, FastAPI, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon import config as config_mod
from daemon import logs
from daemon.config import Config
from daemon.messages import KEY_SECTION
from daemon.messages import Message as BusMessage
from services.control.commands import ACK_TIMEOUT_S, CommandDesk
from services.control.devices import DevicesReport, list_devices
from services.control.live import CaptionHub
from services.control.metrics import BoxMetrics
from services.control.models import REFUSED, WRITE_REFUSED, ConfigRejected, Health, PublicConfig, StatusReport, refused
from services.control.pages import mount_pages
from services.control.patch_schema import patch_schemas
from services.control.routes import box_router
from services.control.security import AccessGuard, AccessPolicy
from services.control.setup import SetupCode
from services.control.status import StatusAggregator
from services.control.store import ConfigStore, OverlayUnreadable, PatchRejected, apply_patch

#: A config change is a few hundred bytes; anything near this limit is a mistake or an attack.
MAX_BODY_BYTES = 64 * 1024

_PATCH_EXAMPLE = {"languages": {"target": "ja"}, "output": {"voice": None}}


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413, declared (Content-Length) or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(scope, receive, send)
            return
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    # Raised inside the route's body read: FastAPI turns it into the 413 response.
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited, send)

    def _detail(self) -> str:
        return f"request body larger than {self.max_bytes} bytes"

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = refused(413, "request too large", self._detail())
        await response(scope, receive, send)


def _readable(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err.get("loc", ()))
    return f"{loc}: {err.get('msg', 'invalid')}"


def create_app(
    status: StatusAggregator,
    store: ConfigStore,
    publish: Callable[[BusMessage], None],
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    access: AccessPolicy | None = None,
    devices: Callable[[Config], DevicesReport] = list_devices,
    command_timeout_s: float = ACK_TIMEOUT_S,
) -> FastAPI:
    """The control API over ``status`` (bus view), ``store`` (config) and ``publish`` (to the bus).

    ``access`` defaults to the store's config's policy; replace ``app.state.access`` when the
    config changes. ``devices`` is the hardware seam of ``GET /api/devices``.
    """
    app = FastAPI(
        title="tolk control",
        summary="Health, status and configuration of a tolk translation kiosk.",
        version="1",
        # The interactive docs load scripts from a CDN: useless on an offline kiosk.
        docs_url=None,
        redoc_url=None,
        responses=REFUSED,
    )
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    # Added last, so it runs first: nothing is read from a request that is refused anyway.
    app.state.access = access or AccessPolicy.from_config(store.current)
    app.state.setup = setup = SetupCode()
    app.add_middleware(AccessGuard, policy=lambda: app.state.access, setup=setup)

    @app.exception_handler(RequestValidationError)
    async def _invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [_readable(e) for e in exc.errors()]
        if "json" not in request.headers.get("content-type", "json"):
            problems.append("send the body as JSON, with Content-Type: application/json")
        return refused(422, "invalid request", *problems)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route's methods; a path may have several routes.
            headers["Allow"] = ", ".join(_methods_at(app, request.url.path))
        return JSONResponse(
            {"error": str(exc.detail), "problems": [str(exc.detail)]}, status_code=exc.status_code, headers=headers
        )

    @app.get(
        "/health",
        response_model=Health,
        responses={503: {"model": Health, "description": "A process is down or the session is not usable."}},
        summary="200 when every process heartbeats and the session is live or backing off; else 503.",
    )
    async def health(response: Response) -> Health:
        result = status.health()
        if not result.ok:
            response.status_code = 503
        return result

    @app.get("/api/status", response_model=StatusReport, summary="Processes, session, usage, latest captions.")
    async def get_status() -> StatusReport:
        return status.report(store.current)

    @app.get("/api/config", response_model=PublicConfig, summary="The running config; the API key masked.")
    async def get_config() -> dict[str, Any]:
        return store.public()

    @app.patch(
        "/api/config",
        response_model=PublicConfig,
        responses={
            **WRITE_REFUSED,
            422: {"model": ConfigRejected, "description": "Refused; nothing was changed."},
            413: {"model": ConfigRejected, "description": f"Body over {max_body_bytes} bytes."},
        },
        summary="Change part of the config (same shape as the file; null removes an HTTP override).",
    )
    async def patch_config(
        changes: dict[str, Any] = Body(..., examples=[_PATCH_EXAMPLE]),  # noqa: B008
    ) -> Any:
        try:
            await apply_patch(store, publish, changes)
        except PatchRejected as exc:
            return refused(422, "config refused", *exc.problems)
        except OverlayUnreadable as exc:
            return refused(500, "stored config unreadable", str(exc))
        return store.public()

    @app.put(
        "/api/key",
        status_code=204,
        response_class=Response,
        responses={
            **WRITE_REFUSED,
            409: {"model": ConfigRejected, "description": "The installer's key (credential, file, environment) wins."},
            422: {"model": ConfigRejected, "description": "Not a key; nothing was changed."},
            500: {"model": ConfigRejected, "description": "The state directory could not take it."},
        },
        summary="Store the API key (never shown again); the session connects with it at once.",
    )
    async def put_key(body: dict[str, Any] = Body(..., examples=[{"api_key": "sk-…"}])) -> Response:  # noqa: B008
        if set(body) != {"api_key"}:
            return refused(422, "key refused", 'send {"api_key": "…"} and nothing else')
        try:
            key = config_mod.check_api_key(body["api_key"])
        except ValueError as exc:
            return refused(422, "key refused", str(exc))
        if (installer := _installer_key(store.current)) is not None:
            return refused(409, "key not stored", installer)
        logs.redact(key)
        try:
            config_mod.store_api_key(key)
        except OSError as exc:
            return refused(500, "key not stored", f"{config_mod.stored_key_path().parent}: {exc.strerror or exc}")
        setup.withdraw()  # the box is set up: the one-time way in ends
        publish(store.announcement([KEY_SECTION]))
        return Response(status_code=204)

    @app.delete(
        "/api/key",
        status_code=204,
        response_class=Response,
        responses={**WRITE_REFUSED, 409: {"model": ConfigRejected, "description": "The installer's key wins."}},
        summary="Forget the key entered on the admin page.",
    )
    async def delete_key() -> Response:
        if (installer := _installer_key(store.current)) is not None:
            return refused(409, "key not removed", installer)
        try:
            removed = config_mod.forget_api_key()
        except OSError as exc:
            return refused(500, "key not removed", str(exc.strerror or exc))
        if removed:
            publish(store.announcement([KEY_SECTION]))
        return Response(status_code=204)

    # Shared with the fleet's requests (remote.py): one way to send a command and hear its answer.
    app.state.desk = desk = CommandDesk(publish, command_timeout_s)
    status.observers.append(desk.observe)  # the processes' answers come in with their states
    app.include_router(box_router(lambda: store.current, desk, devices, BoxMetrics(status)))
    mount_pages(app, CaptionHub(status, lambda: store.current, setup))
    _describe_patch_body(app)
    return app


def _installer_key(cfg: Config) -> str | None:
    """Why a key entered here would not be used, or None: the installer's source wins."""
    key, origin = config_mod.api_key(cfg)
    if key is None or origin == config_mod.STORED_KEY_ORIGIN:
        return None
    return f"the API key comes from {origin}, set by whoever installed the box: change it there"


def _methods_at(app: FastAPI, path: str) -> list[str]:
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.methods and route.path_regex.fullmatch(path):
            methods |= route.methods
    return sorted(methods)


def _describe_patch_body(app: FastAPI) -> None:
    """The PATCH body is taken as a plain object (the config model's messages are the clearer
    ones), so its schema is put into /openapi.json here, derived from the config model."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
            body, components = patch_schemas()
            schema.setdefault("components", {}).setdefault("schemas", {}).update(components)
            content = schema["paths"]["/api/config"]["patch"]["requestBody"]["content"]
            content["application/json"]["schema"] = body
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
