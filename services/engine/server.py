"""The engine's WebSocket endpoint: ``ws://127.0.0.1:PORT/api-ws/v1/realtime?model=…``, as the cloud's.

The handshake answers like the service (protocol.md 1, 6): 404 ``NotFound`` for another path,
404 ``ModelNotFound`` for a model the engine does not serve (the LiveTranslate names only: it has
no Omni). No key is asked for: the engine listens on loopback only. The models (and the
conversation code that uses them) load on the first connection (``loader.py``).
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request, Response

from services.engine.loader import ModelLoader

if TYPE_CHECKING:
    from services.engine.conversation import Conversation

log = logging.getLogger("tolk.engine")

PATH = "/api-ws/v1/realtime"
MODELS = frozenset(
    {
        "qwen3-livetranslate-flash-realtime",
        "qwen3-livetranslate-flash-realtime-2025-09-22",
        "qwen3.5-livetranslate-flash-realtime",
    }
)
#: Client events are small; one image is at most 500 KB (plus base64 and JSON).
MAX_FRAME_BYTES = 2**20


class EngineServer:
    def __init__(self, loader: ModelLoader, host: str, port: int) -> None:
        self.loader = loader
        self.host = host
        self.port = port
        self.connections = 0
        self.live: dict[int, Conversation] = {}
        self._models: dict[int, str] = {}
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{PATH}"

    async def start(self) -> None:
        self._server = await serve(
            self._handle,
            self.host,
            self.port,
            process_request=self._handshake,
            max_size=MAX_FRAME_BYTES,
            compression=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path)
        if parts.path != PATH:
            return _refuse(connection, HTTPStatus.NOT_FOUND, "NotFound", f"no endpoint at {parts.path}")
        model = parse_qs(parts.query).get("model", [""])[0]
        if model not in MODELS:
            return _refuse(
                connection,
                HTTPStatus.NOT_FOUND,
                "ModelNotFound",
                f"model {model!r} not served here; the local engine serves {', '.join(sorted(MODELS))}",
            )
        self._models[id(connection)] = model
        return None

    async def _handle(self, ws: ServerConnection) -> None:
        self.connections += 1
        number = self.connections
        model = self._models.pop(id(ws), "")
        try:
            engine = await self.loader.get()
        except Exception as exc:
            # The client is told, as the service tells of its own failures; the next one retries.
            log.error("connection %d: the engine's models did not load: %s", number, exc)
            await ws.close(1011, "the local engine's models did not load")
            return
        from services.engine.conversation import Conversation

        conversation = Conversation(engine, ws, number, model)
        self.live[number] = conversation
        log.info("connection %d opened", number)
        try:
            await conversation.run()
        finally:
            self.live.pop(number, None)
            log.info(
                "connection %d closed (%d responses, %d client errors)",
                number,
                conversation.responses,
                conversation.errors_sent,
            )


def _refuse(connection: ServerConnection, status: int, code: str, message: str) -> Response:
    response = connection.respond(status, json.dumps({"code": code, "message": message}) + "\n")
    response.headers["Content-Type"] = "application/json"
    return response
