"""How a live connection ends: rotation at a pause, a stalled service, the cloud back after a
fallback to the engine, ``session.finish``."""

from __future__ import annotations

import asyncio
import contextlib
import time

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from daemon.realtime.profiles import profile_for
from services.session import fallback as fallback_mod
from services.session import protocol
from services.session.events import EventHandler

#: Past the rotation age, wait at most this long for a pause (bounded by the service's limit).
ROTATE_GRACE_S = 300.0
#: While speech awaits an answer, the connection is asked to prove it is alive this often...
PING_EVERY_S = 1.0
#: ...and is dead when no pong comes back within this: a silent network loss shows in under
#: 4 s (where TCP itself and the stall timeout took 20-40 s), while the utterance in flight is
#: still within the backlog (``backlog_s``, 5 s by default) and goes whole on the next connection.
PONG_TIMEOUT_S = 2.5


class ConnectionLifetime(EventHandler):
    """The session's watchers of one connection; the connection loop lives in service.py."""

    _live: bool
    ids: protocol.EventIds
    fallback: fallback_mod.CloudFallback

    async def _send(self, ws: ClientConnection, event: dict[str, object]) -> None:
        await ws.send(protocol.encode(event))

    async def _rotate(self, ws: ClientConnection) -> None:
        """Past the rotation age, end the session at the next pause (or when the grace runs out)."""
        service = self.config.service
        await asyncio.sleep(service.rotate_after_s)
        limit = profile_for(service.model).session_limit_s
        grace = max(1.0, min(ROTATE_GRACE_S, limit - service.rotate_after_s - 30.0))
        self.log.info("session %.0f s old: rotating at the next pause", service.rotate_after_s)
        await self._until_pause(grace)
        self.count("rotations")
        await self._end_session(ws, f"rotating after {service.rotate_after_s:.0f} s, at a pause")

    async def _watch_cloud(self, ws: ClientConnection) -> None:
        """On the engine in the cloud's stead: back to the cloud at a pause once it answers."""
        # A remote host has no event to wait on: it is asked at intervals, cheaply.
        while True:
            if await fallback_mod.cloud_answers(self.config):
                break
            await asyncio.sleep(fallback_mod.probe_interval(self.config))
        self.log.info("the cloud answers again: going back to it at the next pause")
        await self._until_pause(ROTATE_GRACE_S)
        self.fallback.reset()
        await self._end_session(ws, "back to the cloud")

    async def _until_pause(self, grace_s: float) -> None:
        """Until nobody speaks and no answer is on its way, or ``grace_s`` ran out."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + grace_s
        while not self.activity.at_pause(time.monotonic()) and loop.time() < give_up:
            self.activity.changed.clear()
            # Woken by audio sent or a response ending; the timeout lets a silence grow into a pause.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.activity.changed.wait(), 0.2)

    async def _watch_stall(self, ws: ClientConnection) -> None:
        """Speech went out and nothing at all came back for stall_timeout_s: give the connection up."""
        timeout = self.config.service.stall_timeout_s
        if not timeout:
            return
        while (waited := self.activity.stalled_for(time.monotonic())) < timeout:
            if waited:
                await asyncio.sleep(timeout - waited)  # then look again: an answer may have come
            else:
                await self.activity.waiting.wait()  # nothing sent that awaits an answer
        self.count("stalls")
        self.stalled = f"the service stopped answering: nothing for {waited:.0f} s after speech was sent"
        self.log.warning("%s; reconnecting", self.stalled)
        self._live = False
        await ws.close()

    async def _watch_liveness(self, ws: ClientConnection) -> None:
        """Speech is waiting for an answer: ping; no pong in time and the connection is given up."""
        while True:
            await self.activity.waiting.wait()
            await asyncio.sleep(PING_EVERY_S)
            if not self.activity.waiting.is_set():
                continue  # the service answered meanwhile: it is alive
            try:
                pong = await ws.ping()
                await asyncio.wait_for(pong, PONG_TIMEOUT_S)
            except ConnectionClosed:
                return  # the receiver reports the close
            except TimeoutError:
                break
        self.count("dead_connections")
        self.stalled = f"the connection is dead: no answer to a ping within {PONG_TIMEOUT_S:g} s"
        self.log.warning("%s; reconnecting", self.stalled)
        self._live = False
        # A close handshake cannot cross a dead network: drop the socket at once.
        ws.transport.abort()

    async def _end_session(self, ws: ClientConnection, why: str, limit_s: float | None = None) -> None:
        """``session.finish``, wait (bounded) for ``session.finished``, close. A receiver must run."""
        if not self._live:
            await ws.close()  # not live yet: nothing to finish
            return
        self.log.info("finishing the session: %s", why)
        self._live = False
        self.ending = True
        if not profile_for(self.config.service.model).finish:
            await ws.close()  # Omni rejects session.finish (protocol.md 6): at a pause, just close
            return
        self.finished.clear()
        timeout = min(self.config.service.finish_timeout_s, limit_s or float("inf"))
        try:
            await self._send(ws, protocol.session_finish(self.ids.next()))
            await asyncio.wait_for(self.finished.wait(), timeout)
        except TimeoutError:
            self.log.warning("no session.finished in %.1f s; closing", timeout)
        except ConnectionClosed:
            pass
        await ws.close()
