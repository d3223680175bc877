"""The live captions stream (``/api/captions``) and the screen's banner.

A client gets one ``state`` message on connect (the banner, the languages, the latest
utterances), then a ``caption`` message each time an utterance changes (the whole utterance
as it now stands, so a client only ever replaces), and a ``screen`` message when the banner
or the languages change. Each client has a small bounded queue; a client that cannot keep
up gets a fresh ``state`` instead of an ever longer backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel
from starlette.websockets import WebSocket, WebSocketDisconnect

from daemon import backend
from daemon import config as config_mod
from daemon.config import Config
from daemon.messages import Caption, Message, SessionStatus
from services.control.notice import notice
from services.control.setup import SetupCode
from services.control.setup import view as setup_view
from services.control.status import StatusAggregator

#: How often an idle stream re-checks the banner (a process going quiet sends nothing).
SCREEN_CHECK_S = 1.0
FEED_SIZE = 64
MAX_CLIENTS = 32


class Banner(BaseModel):
    level: Literal["ok", "info", "warn", "error"]
    text: str = ""
    detail: str = ""


def banner(status: StatusAggregator) -> Banner:
    """What the screen should say about the translation service, in words a visitor follows."""
    if not status.process_up("session"):
        return Banner(level="error", text="Translation offline", detail="the session process is not running")
    session = status.session_info()
    state = session.state
    if state == "live" and session.backend == backend.FALLBACK:
        return Banner(
            level="info",
            text="Offline mode — translating on this box",
            detail="the translation service cannot be reached; it is used again as soon as it answers",
        )
    if state == "live":
        return Banner(level="ok")
    if state in ("unknown", "connecting", "configuring"):
        return Banner(level="info", text="Connecting to the translation service…")
    if state == "backoff":
        return Banner(level="warn", text="Offline — reconnecting…", detail=session.last_error or session.detail)
    why = session.last_error or session.detail
    lowered = why.lower()
    if "no api key" in lowered:
        return Banner(level="error", text="No API key set", detail="staff: enter it on the admin page (/admin)")
    if "api key" in lowered or "401" in lowered or "invalidapikey" in lowered.replace("_", ""):
        return Banner(level="error", text="Wrong API key", detail="staff: check the key and its region")
    if state == "failed":
        return Banner(level="error", text="Translation stopped", detail=why)
    return Banner(level="info", text=f"Translation {state}", detail=why)


class Feed:
    """One client's queue of events; overflowing turns the backlog into one resync."""

    def __init__(self, size: int = FEED_SIZE) -> None:
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(size)

    def put(self, event: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(event)
        except asyncio.QueueFull:
            while not self.queue.empty():
                self.queue.get_nowait()
            self.queue.put_nowait({"type": "resync"})


class CaptionHub:
    """Turns the aggregator's view of the bus into events for each connected client."""

    def __init__(
        self,
        status: StatusAggregator,
        config: Callable[[], Config],
        setup: SetupCode | None = None,
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.status = status
        self.config = config
        self.setup = setup or SetupCode()
        self.max_clients = max_clients
        self.feeds: set[Feed] = set()
        status.observers.append(self._observe)

    def _observe(self, msg: Message, now: float) -> None:
        if not self.feeds:
            return
        if isinstance(msg, Caption):
            info = self.status.caption(msg.utterance)
            if info is None:
                return
            event = {"type": "caption", "caption": info.model_dump(mode="json")}
        elif isinstance(msg, SessionStatus):
            event = {"type": "check"}  # the pump recomputes the banner now, not at its next tick
        else:
            return
        for feed in self.feeds:
            feed.put(event)

    def screen(self) -> dict[str, Any]:
        cfg = self.config()
        camera = cfg.camera.source != "none" and self.status.process_up("camera")
        has_key = config_mod.api_key(cfg)[0] is not None  # read once: every screen asks each second
        return {
            "banner": banner(self.status).model_dump(),
            "source": cfg.languages.source,
            "target": self.status.session_target() or cfg.languages.target,
            "visitor_languages": cfg.control.visitor_languages if cfg.languages.mode == "one-way" else [],
            "source_captions": cfg.output.source_captions,
            "mode": cfg.languages.mode,
            "cleared": self.status.captions_cleared,  # the room fell quiet: what was said leaves
            "camera": camera,
            "setup": setup_view(cfg, self.setup, has_key),
            "notice": notice(cfg, camera) if backend.resolve(cfg, has_key) == "cloud" else [],
        }

    def state(self) -> dict[str, Any]:
        captions = [c.model_dump(mode="json") for c in self.status.captions()]
        return {"type": "state", **self.screen(), "captions": captions}

    async def serve(self, ws: WebSocket) -> None:
        """One client, until it goes away."""
        if len(self.feeds) >= self.max_clients:
            await ws.close(code=1013, reason="too many caption screens")
            return
        await ws.accept()
        feed = Feed()
        self.feeds.add(feed)
        try:
            # Two halves: the pump writes; the listener only notices the client leaving.
            async with asyncio.TaskGroup() as group:
                pump = group.create_task(self._pump(ws, feed))
                group.create_task(self._until_closed(ws, pump))
        except* (WebSocketDisconnect, OSError):
            pass
        finally:
            self.feeds.discard(feed)

    async def _pump(self, ws: WebSocket, feed: Feed) -> None:
        state = self.state()
        screen = {k: v for k, v in state.items() if k not in ("type", "captions")}
        await ws.send_json(state)
        while True:
            with contextlib.suppress(TimeoutError):
                event = await asyncio.wait_for(feed.queue.get(), SCREEN_CHECK_S)
                if event["type"] == "resync":
                    state = self.state()
                    screen = {k: v for k, v in state.items() if k not in ("type", "captions")}
                    await ws.send_json(state)
                elif event["type"] == "caption":
                    await ws.send_json(event)
            self.status.forget_if_quiet()
            now = self.screen()
            if now["cleared"] != screen["cleared"]:
                state = self.state()
                screen = {k: v for k, v in state.items() if k not in ("type", "captions")}
                await ws.send_json(state)  # the screen starts afresh, with no caption
            elif now != screen:
                screen = now
                await ws.send_json({"type": "screen", **now})

    @staticmethod
    async def _until_closed(ws: WebSocket, pump: asyncio.Task[None]) -> None:
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                message = await ws.receive()
                if message["type"] == "websocket.disconnect":
                    break
        pump.cancel()
