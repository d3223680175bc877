"""The engine's WebSocket endpoint: ``ws://127.0.0.1:PORT/api-ws/v1/realtime?model=…``, as the cloud's.

The handshake answers like the service (protocol.md 1, 6): 404 ``NotFound`` for another path,
404 ``ModelNotFound`` for a model the engine does not serve (the LiveTranslate names only: it has
no Omni). No key is asked for: the engine listens on loopback only. The models (and the
conversation code that uses them) load on the first connection (``loader.py``).
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import TYPE_CHECKING

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from daemon.realtime.server import RealtimeServer, refuse
from services.engine.loader import ModelLoader

if TYPE_CHECKING:
    from services.engine.conversation import Conversation

MODELS = frozenset(
    {
        "qwen3-livetranslate-flash-realtime",
        "qwen3-livetranslate-flash-realtime-2025-09-22",
        "qwen3.5-livetranslate-flash-realtime",
    }
)


class EngineServer(RealtimeServer["Conversation"]):
    log = logging.getLogger("tolk.engine")

    def __init__(self, loader: ModelLoader, host: str, port: int) -> None:
        super().__init__(host, port)
        self.loader = loader
        self.connections = 0
        self._models: dict[int, str] = {}

    def admit(
        self, connection: ServerConnection, request: Request, model: str, query: dict[str, list[str]]
    ) -> Response | None:
        if model not in MODELS:
            return refuse(
                connection,
                HTTPStatus.NOT_FOUND,
                "ModelNotFound",
                f"model {model!r} not served here; the local engine serves {', '.join(sorted(MODELS))}",
            )
        self._models[id(connection)] = model
        return None

    async def open(self, ws: ServerConnection) -> Conversation | None:
        self.connections += 1
        number = self.connections
        model = self._models.pop(id(ws), "")
        try:
            engine = await self.loader.get()
        except Exception as exc:
            # The client is told, as the service tells of its own failures; the next one retries.
            self.log.error("connection %d: the engine's models did not load: %s", number, exc)
            await ws.close(1011, "the local engine's models did not load")
            return None
        from services.engine.conversation import Conversation

        return Conversation(engine, ws, number, model)

    def closed(self, conversation: Conversation) -> None:
        self.log.info(
            "connection %d closed (%d responses, %d client errors)",
            conversation.number,
            conversation.responses,
            conversation.errors_sent,
        )
