"""A connection's life: connect, handshake, live, lost or ended, wait, again.

One connection at a time: connect -> ``session.created`` -> ``session.update`` ->
``session.updated`` -> live (the sender sends, events go to the handler) until it closes; then
connect again after the wait ``retry.py`` decides (a missing key waits for a config change).
While live, watchers end the connection: rotation at a pause, a stalled service, a dead
network, the cloud back after a fallback to the box's own engine (``fallback.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from typing import Any, Protocol

from websockets.exceptions import ConnectionClosed

from daemon import config as config_mod
from daemon import logs
from daemon.realtime.profiles import profile_for
from daemon.service import Service
from services.session import fallback as fallback_mod
from services.session import protocol
from services.session.connection import (
    ConnectFailure,
    Link,
    ServiceRejected,
    close_reason,
    connect_service,
    is_loopback,
)
from services.session.direction import Direction
from services.session.events import EventHandler
from services.session.fallback import CloudFallback
from services.session.pacing import FleetPacing
from services.session.pause import Activity
from services.session.retry import RetryPolicy, Wait
from services.session.sender import Sender

NO_KEY = "no API key: enter it on the admin page, or set DASHSCOPE_API_KEY or [service] api_key_file"
#: Past the rotation age, wait at most this long for a pause (bounded by the service's limit).
ROTATE_GRACE_S = 300.0
#: While speech awaits an answer, the connection is asked to prove it is alive this often...
PING_EVERY_S = 1.0
#: ...and is dead when no pong comes back within this: a silent network loss shows in under
#: 4 s (where TCP itself and the stall timeout took 20-40 s), while the utterance in flight is
#: still within the backlog (``backlog_s``, 5 s by default) and goes whole on the next connection.
PONG_TIMEOUT_S = 2.5


class Status(Protocol):
    """Where the lifetime says what the session is doing (the session process publishes it)."""

    last_error: str

    def set_state(self, state: str, detail: str = "", error_code: str | None = None) -> None: ...


class ConnectionLifetime:
    def __init__(
        self,
        process: Service,
        status: Status,
        events: EventHandler,
        sender: Sender,
        direction: Direction,
        activity: Activity,
        ids: protocol.EventIds,
        pacing: FleetPacing | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.process = process  # config, counters, log, tasks
        self.status = status
        self.events = events
        self.sender = sender
        self.direction = direction
        self.activity = activity
        self.ids = ids
        self.fallback = CloudFallback()
        self.retry = RetryPolicy(self.fallback, rng)
        self.pacing = pacing
        self.reconnects = 0
        self.session_id = ""
        self.link: Link | None = None  # the connection now open, if any
        self._wake = asyncio.Event()

    @property
    def live(self) -> bool:
        return self.link is not None and self.link.live

    @property
    def open(self) -> bool:
        return self.link is not None and self.link.open

    def wake(self) -> None:
        """Try again now: a config change may be what was missing (a key file, a voice)."""
        self._wake.set()

    # --- the loop ------------------------------------------------------------------------------

    async def run(self) -> None:
        attempt = 0
        while True:
            self._wake.clear()
            key, _origin = config_mod.api_key(self.process.config)
            if key is None and not is_loopback(self.fallback.url(self.process.config)):
                self.status.last_error = NO_KEY
                self.status.set_state("failed", NO_KEY)
                await self._wake.wait()
                continue
            if attempt:
                self.reconnects += 1
                self.process.count("reconnects")
            attempt += 1
            wait = None
            try:
                # Returns only when we ended the session on purpose (rotation, restart): reconnect now.
                await self._connection(key)
            except ConnectFailure as exc:
                # Refused without a key (a loopback url is tried without one): the missing key is the reason.
                self.status.last_error = f"{NO_KEY} (refused: {exc})" if key is None and exc.fatal else str(exc)
                effective = self.direction.effective(self.process.config)
                wait = self.retry.after_failure(exc, effective, time.monotonic())
            except ServiceRejected as exc:
                self.status.last_error = str(exc)
                wait = self.retry.after_rejection(exc)
            if wait is not None:
                await self._wait(wait)

    async def _wait(self, wait: Wait) -> None:
        self.status.set_state(wait.state, wait.detail, error_code=wait.error_code)
        if wait.delay_s:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait.delay_s)

    # --- one connection --------------------------------------------------------------------------

    async def _connection(self, key: str | None) -> None:
        """One connection, from handshake to close. Returns when it closed cleanly."""
        service = self.process.config.service
        url = self.fallback.url(self.process.config)  # the cloud, or the box's own engine
        if self.pacing is not None:
            await self.pacing.turn(lambda why: self.status.set_state("backoff", why))
        self.status.set_state("connecting", url)
        link = self.link = Link(await connect_service(url, service.model, key, service.connect_timeout_s))
        tasks: list[asyncio.Task[None]] = []
        clean = False
        try:
            await self._handshake(link)
            spawn = self.process.spawn
            tasks = [
                spawn(self.sender.run(link), "sender"),
                spawn(self._rotate(link), "rotate"),
                spawn(self._watch_stall(link), "stall"),
                spawn(self._watch_liveness(link), "liveness"),
            ]
            if self.fallback.active:
                tasks.append(spawn(self._watch_cloud(link), "cloud-probe"))
            await self._receive(link)
            clean = True
        except ConnectionClosed as exc:
            why, link.stalled = link.stalled or f"connection closed: {close_reason(exc)}", ""
            raise ConnectFailure(why) from None
        finally:
            for task in tasks:
                task.cancel()
            if self.retry.connection_closed(time.monotonic() - link.opened, link.answers > 0, clean):
                self.process.count("short_lived_connections")
            current = asyncio.current_task()
            # Shutting down: finish() still ends the session on this connection.
            if current is None or not current.cancelling():
                self.sender.connection_ended(clean)
                link.live = False
                self.link = None
                self.events.connection_lost()
                await link.ws.close()

    async def _handshake(self, link: Link) -> None:
        timeout = self.process.config.service.connect_timeout_s
        created = await self._expect(link, "session.created", timeout)
        session = created.get("session")
        ident = session.get("id") if isinstance(session, dict) else None
        self.session_id = ident if isinstance(ident, str) else ""
        logs.annotate(session_id=self.session_id)  # every later log line carries it
        sent = self.direction.effective(self.process.config)
        self.status.set_state("configuring", f"{sent.languages.source} → {sent.languages.target}")
        self.direction.new_connection()  # this session.update carries the direction already
        await link.send(protocol.session_update(sent, self.ids.next()))
        self.events.follow_output_rate(await self._expect(link, "session.updated", timeout))
        self._go_live(link)
        if protocol.session_config(self.direction.effective(self.process.config)) != protocol.session_config(sent):
            self.sender.wake()  # the config changed while the service was taking the previous one

    def _go_live(self, link: Link) -> None:
        self.fallback.went_live()
        link.live = True
        self.events.new_connection()
        self.activity.reset()
        self.status.set_state("live", protocol.live_detail(self.direction.effective(self.process.config)))
        self.process.mark_fresh()

    async def _expect(self, link: Link, wanted: str, timeout_s: float) -> dict[str, Any]:
        """Read until ``wanted`` arrives; an ``error`` first raises ServiceRejected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                raw = await asyncio.wait_for(link.ws.recv(), left)
            except TimeoutError:
                raise ConnectFailure(f"no {wanted} from the service within {timeout_s:.0f} s") from None
            event = self.events.parse(raw)
            if event is None:
                continue
            if event["type"] == wanted:
                self.process.mark_fresh()
                return event
            if event["type"] == "error":
                step = "the connection" if wanted == "session.created" else "the configuration"
                raise ServiceRejected(step, protocol.service_error(event))
            self._take(link, event, time.monotonic_ns())

    async def _receive(self, link: Link) -> None:
        """Handle events until the connection closes; raises ConnectFailure unless we closed it."""
        async for raw in link.ws:
            received = time.monotonic_ns()
            event = self.events.parse(raw)
            if event is None:
                continue
            if (error := self._take(link, event, received)) is not None:
                await link.ws.close()
                raise ConnectFailure(f"the service reported {error}", fatal=True)
        if link.stalled:
            why, link.stalled = link.stalled, ""
            raise ConnectFailure(why)
        if not link.ending:
            ws = link.ws
            reason = f"code {ws.close_code}" + (f" ({ws.close_reason})" if ws.close_reason else "")
            raise ConnectFailure(f"the service closed the connection: {reason}")

    def _take(self, link: Link, event: dict[str, Any], received_ns: int) -> protocol.ServiceError | None:
        """The handler acts on the event; what it means for this connection is kept here."""
        fatal = self.events.handle(event, received_ns)
        if event["type"] == "session.finished":
            link.finished.set()
        elif event["type"] == "response.done":
            link.answers += 1
            self.sender.answered()
        return fatal

    # --- what ends a live connection ---------------------------------------------------------------

    async def _rotate(self, link: Link) -> None:
        """Past the rotation age, end the session at the next pause (or when the grace runs out)."""
        service = self.process.config.service
        await asyncio.sleep(service.rotate_after_s)
        limit = profile_for(service.model).session_limit_s
        grace = max(1.0, min(ROTATE_GRACE_S, limit - service.rotate_after_s - 30.0))
        self.process.log.info("session %.0f s old: rotating at the next pause", service.rotate_after_s)
        await self._until_pause(grace)
        self.process.count("rotations")
        await self.end(link, f"rotating after {service.rotate_after_s:.0f} s, at a pause")

    async def _watch_cloud(self, link: Link) -> None:
        """On the engine in the cloud's stead: back to the cloud at a pause once it answers."""
        # A remote host has no event to wait on: it is asked at intervals, cheaply.
        while True:
            if await fallback_mod.cloud_answers(self.process.config):
                break
            await asyncio.sleep(fallback_mod.probe_interval(self.process.config))
        self.process.log.info("the cloud answers again: going back to it at the next pause")
        await self._until_pause(ROTATE_GRACE_S)
        self.fallback.reset()
        await self.end(link, "back to the cloud")

    async def _until_pause(self, grace_s: float) -> None:
        """Until nobody speaks and no answer is on its way, or ``grace_s`` ran out."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + grace_s
        while not self.activity.at_pause(time.monotonic()) and loop.time() < give_up:
            self.activity.changed.clear()
            # Woken by audio sent or a response ending; the timeout lets a silence grow into a pause.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.activity.changed.wait(), 0.2)

    async def _watch_stall(self, link: Link) -> None:
        """Speech went out and nothing at all came back for stall_timeout_s: give the connection up."""
        timeout = self.process.config.service.stall_timeout_s
        if not timeout:
            return
        while (waited := self.activity.stalled_for(time.monotonic())) < timeout:
            if waited:
                await asyncio.sleep(timeout - waited)  # then look again: an answer may have come
            else:
                await self.activity.waiting.wait()  # nothing sent that awaits an answer
        self.process.count("stalls")
        link.stalled = f"the service stopped answering: nothing for {waited:.0f} s after speech was sent"
        self.process.log.warning("%s; reconnecting", link.stalled)
        link.live = False
        await link.ws.close()

    async def _watch_liveness(self, link: Link) -> None:
        """Speech is waiting for an answer: ping; no pong in time and the connection is given up."""
        while True:
            await self.activity.waiting.wait()
            await asyncio.sleep(PING_EVERY_S)
            if not self.activity.waiting.is_set():
                continue  # the service answered meanwhile: it is alive
            try:
                pong = await link.ws.ping()
                await asyncio.wait_for(pong, PONG_TIMEOUT_S)
            except ConnectionClosed:
                return  # the receiver reports the close
            except TimeoutError:
                break
        self.process.count("dead_connections")
        link.stalled = f"the connection is dead: no answer to a ping within {PONG_TIMEOUT_S:g} s"
        self.process.log.warning("%s; reconnecting", link.stalled)
        link.live = False
        # A close handshake cannot cross a dead network: drop the socket at once.
        link.ws.transport.abort()

    async def end(self, link: Link, why: str, limit_s: float | None = None) -> None:
        """``session.finish``, wait (bounded) for ``session.finished``, close. A receiver must run."""
        if not link.live:
            await link.ws.close()  # not live yet: nothing to finish
            return
        self.process.log.info("finishing the session: %s", why)
        link.live = False
        link.ending = True
        service = self.process.config.service
        if not profile_for(service.model).finish:
            await link.ws.close()  # Omni rejects session.finish (protocol.md 6): at a pause, just close
            return
        timeout = min(service.finish_timeout_s, limit_s or float("inf"))
        try:
            await link.send(protocol.session_finish(self.ids.next()))
            await asyncio.wait_for(link.finished.wait(), timeout)
        except TimeoutError:
            self.process.log.warning("no session.finished in %.1f s; closing", timeout)
        except ConnectionClosed:
            pass
        await link.ws.close()

    # --- asked from outside: a restart, a new configuration, shutdown ------------------------------

    async def restart(self, why: str, cloud_first: bool = False) -> None:
        """End the connection now (at once, not at a pause) and connect again without waiting."""
        self.retry.reset()
        if cloud_first:
            self.fallback.reset()
        link = self.link
        if link is not None and link.live:
            await self.end(link, why)  # the loop reconnects at once
            return
        if link is not None:
            await link.ws.close()  # a handshake in progress: give it up
        self._wake.set()

    async def update(self, cfg: config_mod.Config) -> None:
        """A new configuration to the live session, if one is live."""
        link = self.link
        if link is not None and link.live:
            with contextlib.suppress(ConnectionClosed):
                await link.send(protocol.session_update(cfg, self.ids.next()))

    async def finish(self, limit_s: float) -> None:
        """Shutting down: send what the microphone still held, then end the session the documented way."""
        link, self.link = self.link, None
        if link is None:
            return
        if not link.live:
            await link.ws.close()
            return
        with contextlib.suppress(ConnectionClosed):
            await self.sender.flush(link)
        reader = asyncio.create_task(self._receive(link), name="session:final-events")
        # Within the lifecycle's stop budget, leaving time for the close handshake.
        await self.end(link, "shutting down", limit_s=limit_s)
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, ConnectFailure):
            await reader
        self.sender.connection_ended(clean=True)  # finished: the service has it all
