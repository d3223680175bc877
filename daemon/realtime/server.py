"""A realtime server's skeleton: the service's WebSocket endpoint, and one connection's loop.

Shared by the two servers of the protocol the box runs, the simulator and the local engine.
``RealtimeServer`` listens at ``ws://HOST:PORT/api-ws/v1/realtime?model=…``, answers another path
as the service does (404 ``NotFound``), and runs one ``Conversation`` per connection. A
conversation sends ``session.created``, checks each client event against the documented rules
(``rules.py``; a bad one is answered with an ``error`` and the connection goes on), answers
``session.update`` with ``session.updated``, and hands the ended utterances and ``session.finish``
to one responder task, in order, so that no response interleaves with another or with
``session.finished``. Each server supplies what differs: which models it admits, what it hears in
the audio and how it answers.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from abc import ABC, abstractmethod
from http import HTTPStatus
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from daemon.realtime.events import Ids, encode, error_event, session_object
from daemon.realtime.rules import Accepted, ClientRules, Rejected

PATH = "/api-ws/v1/realtime"
#: "The client must disconnect after receiving session.finished."
DISCONNECT_WITHIN_S = 10.0

U = TypeVar("U")  # an utterance, as the server's end-of-speech detector cuts it


class Finish:
    """``session.finish``, queued behind the utterances heard before it."""


class Conversation(ABC, Generic[U]):
    """One client connection, from ``session.created`` to the close."""

    def __init__(
        self, ws: ServerConnection, number: int, model: str, rules: ClientRules, server: str, max_pending: int
    ) -> None:
        self.ws = ws
        self.number = number
        self.model = model
        self.rules = rules
        self.ids = Ids(server, str(number))
        self.session_id = self.ids.next("sess")
        self.jobs: asyncio.Queue[U | Finish] = asyncio.Queue(max_pending)
        self._task_name = f"{server}:respond-{number}"

    async def run(self) -> None:
        await self.send(self.session_event("session.created"))
        responder = asyncio.create_task(self._respond(), name=self._task_name)
        try:
            async for raw in self.ws:
                await self._on_frame(raw)
        except ConnectionClosed:
            pass
        finally:
            responder.cancel()
            await asyncio.gather(responder, return_exceptions=True)

    async def send(self, event: dict[str, Any] | str | bytes) -> None:
        """An event (or, for a test's faults, a raw frame) to the client."""
        await self.ws.send(encode(event) if isinstance(event, dict) else event)

    def session_event(self, kind: str) -> dict[str, Any]:
        """``session.created``/``session.updated``: the whole effective session."""
        return self.ids.event(kind, session=session_object(self.session_id, self.model, self.rules.session))

    async def _on_frame(self, raw: str | bytes) -> None:
        try:
            accepted = self.rules.check(raw, asyncio.get_running_loop().time())
        except Rejected as exc:
            self.rejected(raw, exc)
            await self.send(error_event(self.ids, str(exc), exc.code, exc.param, exc.event_id))
            return
        self.accepted(accepted)
        kind = accepted.event["type"]
        if kind == "session.update":
            await self.session_update(accepted.event)
        elif kind == "input_audio_buffer.append":
            await self.audio(accepted.payload)
        elif kind == "session.finish":
            await self.finish_asked()
        # input_image_buffer.append: checked and accepted; what a server sees in it is its own.

    async def _respond(self) -> None:
        while True:
            job = await self.jobs.get()
            if isinstance(job, Finish):
                await self.finish()
                return
            if not await self.reply(job):
                return

    # --- what each server supplies ---------------------------------------------------------------

    @abstractmethod
    def rejected(self, raw: str | bytes, exc: Rejected) -> None:
        """A client event broke the rules (the ``error`` answer is sent after this)."""

    def accepted(self, accepted: Accepted) -> None:
        """A client event passed the rules, before it is acted on."""

    async def session_update(self, event: dict[str, Any]) -> None:
        """The rules took the update: the whole effective session goes back."""
        await self.send(self.session_event("session.updated"))

    @abstractmethod
    async def audio(self, pcm: bytes) -> None:
        """Appended audio: queue each utterance that ended in it (``self.jobs``)."""

    async def finish_asked(self) -> None:
        """``session.finish``: answered after what is queued."""
        await self.jobs.put(Finish())

    @abstractmethod
    async def reply(self, utterance: U) -> bool:
        """Answer one utterance; False when the connection closed and answering ends."""

    async def finish(self) -> None:
        """Say ``session.finished`` and expect the client to go."""
        await self.send(self.ids.event("session.finished"))
        try:
            await asyncio.wait_for(self.ws.wait_closed(), DISCONNECT_WITHIN_S)
        except TimeoutError:
            self.lingered()
        await self.ws.close()

    def lingered(self) -> None:
        """The client was still connected ``DISCONNECT_WITHIN_S`` after ``session.finished``."""


C = TypeVar("C", bound=Conversation[Any])


class RealtimeServer(ABC, Generic[C]):
    """The endpoint: the handshake as the service answers it, then a conversation per connection."""

    log: ClassVar[logging.Logger]
    #: Client events are small; one image is at most 500 KB (plus base64 and JSON).
    max_frame_bytes: ClassVar[int] = 2**20

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.attempts = 0  # handshakes, refused ones included
        self.live: dict[int, C] = {}  # open conversations by number
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The endpoint to put in ``[service] url`` (the client adds ``?model=``)."""
        return f"ws://{self.host}:{self.port}{PATH}"

    async def start(self, sock: socket.socket | None = None) -> None:
        """Listen on HOST:PORT, or on ``sock``, a listening socket handed over (socket activation)."""
        where: dict[str, Any] = {"sock": sock} if sock is not None else {"host": self.host, "port": self.port}
        self._server = await serve(
            self._handle, process_request=self._handshake, max_size=self.max_frame_bytes, compression=None, **where
        )
        address = self._server.sockets[0].getsockname()
        self.port = address[1]
        if sock is not None:
            self.host = address[0]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def _handshake(self, connection: ServerConnection, request: Request) -> Response | None:
        self.attempts += 1
        parts = urlsplit(request.path)
        if parts.path != PATH:
            return refuse(connection, HTTPStatus.NOT_FOUND, "NotFound", f"no endpoint at {parts.path}")
        query = parse_qs(parts.query)
        return self.admit(connection, request, query.get("model", [""])[0], query)

    async def _handle(self, ws: ServerConnection) -> None:
        conversation = await self.open(ws)
        if conversation is None:
            return
        self.live[conversation.number] = conversation
        self.log.info("connection %d opened", conversation.number)
        try:
            await conversation.run()
        finally:
            self.live.pop(conversation.number, None)
            self.closed(conversation)

    # --- what each server supplies ---------------------------------------------------------------

    @abstractmethod
    def admit(
        self, connection: ServerConnection, request: Request, model: str, query: dict[str, list[str]]
    ) -> Response | None:
        """The refusal (``refuse``), or None to take the connection (keep what ``open`` needs)."""

    @abstractmethod
    async def open(self, ws: ServerConnection) -> C | None:
        """The conversation for an admitted connection; None when it cannot have one (closed)."""

    @abstractmethod
    def closed(self, conversation: C) -> None:
        """A conversation ended (its connection closed)."""


def refuse(
    connection: ServerConnection, status: int, code: str, message: str, retry_after_s: float | None = None
) -> Response:
    """A refused handshake as the service words it: a JSON body with ``code`` and ``message``."""
    response = connection.respond(status, json.dumps({"code": code, "message": message}) + "\n")
    response.headers["Content-Type"] = "application/json"
    if retry_after_s is not None:
        response.headers["Retry-After"] = f"{retry_after_s:g}"
    return response
