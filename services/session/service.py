"""The realtime session process: microphone audio to the service, translation back onto the bus.

One connection at a time: connect -> ``session.created`` -> ``session.update`` ->
``session.updated`` -> live (audio out, events in) until it closes; then reconnect with backoff
and jitter. A refused key, a missing key or a refused configuration stop the retrying and say
so in the state, and are retried only slowly, or at once on a config change or a
``restart-session`` command; so are connections that keep dying within seconds of opening.
Stalls and rotation at a pause are watched in ``lifetime.py``, events handled in ``events.py``.
READY never waits for the network: a box must start offline.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State

from daemon import config as config_mod
from daemon import fleet, logs
from daemon.backend import session_url
from daemon.backoff import FLEET_SPREAD, Backoff, box_rng
from daemon.messages import (
    KEY_SECTION,
    AudioIn,
    AudioReplay,
    AudioResume,
    AudioSettled,
    Command,
    FleetBudget,
    PlaybackState,
    SessionStatus,
    SpeechActivity,
    VideoFrame,
)
from daemon.service import STOP_TIMEOUT_S, ServiceContext
from services.session import protocol
from services.session.connection import ConnectFailure, close_reason, connect_service, is_loopback, retrying
from services.session.events import ServiceRejected
from services.session.fallback import CloudFallback
from services.session.lifetime import ConnectionLifetime
from services.session.outgoing import Outgoing
from services.session.pacing import FleetPacing
from services.session.resume import RESUME_REPEAT_S, RESUME_WAIT_S, AudioIntake
from services.session.visitor import VisitorChoice

RESTART_REQUESTED = "restart requested"
NO_KEY = "no API key: enter it on the admin page, or set DASHSCOPE_API_KEY or [service] api_key_file"
#: A configuration the service refused is tried again this rarely (or at once on a config change).
CONFIG_RETRY_S = 60.0
#: A refused key or account: a person must act, but a paid bill or a restored key should not
#: need one at the box too. Retried this rarely, or at once on a config change.
FATAL_RETRY_S = 15 * 60.0
#: Throttled with no Retry-After: never sooner than this.
THROTTLED_FLOOR_S = 5.0
#: A connection that stayed open this long resets the backoff; shorter ones count as failures.
STABLE_S = 10.0
#: This many short-lived connections in a row: the service is not really working; say so.
FLAPPING_LIMIT = 3
#: SessionStatus is re-sent this often so that a process that joins late learns the state.
STATUS_REPEAT_S = 2.0
COUNTERS = (
    "chunks_sent",
    "audio_seconds_sent",
    "deltas_received",
    "reconnects",
    "backlog_dropped",
    "malformed_events",
    "images_sent",
    "images_rejected",
    "responses",
    "responses_interrupted",
    "errors_received",
    "stalls",
    "rotations",
    "short_lived_connections",
    "chunks_resent",
    "chunks_requeued",
    "dead_connections",
    "wrong_direction_events",
    "deltas_after_barge_in",
)


class SessionService(ConnectionLifetime):
    name = "session"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.session_state = "connecting"
        self.detail = ""
        self.last_error = ""
        self.reconnects = 0
        self.session_id = ""
        self.ids = protocol.EventIds()
        self.outgoing = Outgoing(self.config.service.chunk_ms, self.config.service.backlog_s)
        self.intake = AudioIntake(self.outgoing)
        self._settled_published = -1
        # Jitter of this box's own (its box id), and its turn in the fleet's budget (pacing.py).
        self.backoff = Backoff(max_s=30.0, spread=FLEET_SPREAD, rng=box_rng(fleet.box_id(self.config)))
        self.pacing = FleetPacing(self.config)
        self.fallback = CloudFallback()
        self.short_lived = 0
        self._ws: ClientConnection | None = None
        self._live = False
        self._audio_sent = False
        self._answers = 0  # responses done on the current connection
        self._wake = asyncio.Event()
        self.setup_events()
        self.visitor = VisitorChoice(
            self.direction, self._visitor_changed, lambda: self.config.control.captions_clear_s, self.log
        )
        for counter in COUNTERS:
            self.counters[counter] = 0

    async def start(self) -> None:
        # Only the bus: READY must not wait for the network (a box starts offline too).
        self._audio = self.bus.subscribe(["capture"], AudioIn, AudioReplay)
        self._video = self.bus.subscribe(["camera"], VideoFrame)
        self._commands = self.bus.subscribe(["control"], Command)
        self._playback = self.bus.subscribe(["playback"], PlaybackState)
        self._speech = self.bus.subscribe(["capture"], SpeechActivity)
        self._fleet = self.bus.subscribe(["mqtt"], FleetBudget)

    async def run(self) -> None:
        self.spawn(self._read_audio(), "audio-in")
        self.spawn(self._resume(), "resume")
        self.spawn(self._read_video(), "video-in")
        self.spawn(self._read_commands(), "commands")
        self.spawn(self._follow_playback(), "barge-in")
        self.spawn(self._repeat_status(), "status")
        self.spawn(self.visitor.follow(self._speech), "visitor")
        self.spawn(self.pacing.follow(self._fleet), "fleet-budget")
        await self._connect_loop()

    # --- state ---------------------------------------------------------------------------------

    def status(self) -> str:
        line = f"{self.session_state}: {self.detail}" if self.detail else self.session_state
        if self.reconnects:
            line += f" (reconnects {self.reconnects})"
        return line

    def set_state(self, state: str, detail: str = "", error_code: str | None = None) -> None:
        if (state, detail) == (self.session_state, self.detail):
            return
        self.session_state, self.detail = state, detail
        log = self.log.warning if state in ("failed", "backoff") else self.log.info
        log("session %s", self.status(), extra=logs.fields(error_code=error_code))
        self.publish_status()

    def publish_status(self) -> None:
        self.bus.publish(
            SessionStatus(
                state=self.session_state,
                detail=self.detail,
                last_error=self.last_error,
                reconnects=self.reconnects,
                session_id=self.session_id,
                backlog_dropped=self.outgoing.dropped,
                model=self.config.service.model,
                backend=self.fallback.label(self.config),
                target=self.direction.effective(self.config).languages.target,
            )
        )

    async def _repeat_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_REPEAT_S)
            self.publish_status()
            self.publish_usage()  # the rate per hour falls while the box is idle
            if not self._live:
                # Waiting on a bounded timer or on a person is honest work: restarting the
                # process cannot fix a refused key, and would retry against the account.
                self.mark_fresh()
            elif self._ws is not None and self._ws.state is State.OPEN:
                # Connected counts as working even in a long silence (speech-only streaming sends
                # nothing then): the socket's keepalive pings close it if the service is gone.
                self.mark_fresh()

    # --- the connection loop -------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            self._wake.clear()
            key, _origin = config_mod.api_key(self.config)
            if key is None and not is_loopback(self.fallback.url(self.config)):
                self.last_error = NO_KEY
                self.set_state("failed", NO_KEY)
                await self._wake.wait()
                continue
            if attempt:
                self.reconnects += 1
                self.count("reconnects")
            attempt += 1
            delay = 0.0
            try:
                # Returns only when we ended the session on purpose (rotation, restart): reconnect now.
                await self._session(key)
            except ConnectFailure as exc:
                # Refused without a key (a loopback url is tried without one): the missing key is the reason.
                self.last_error = f"{NO_KEY} (refused: {exc})" if key is None and exc.fatal else str(exc)
                delay = self._after_failure(exc)
            except ServiceRejected as exc:
                self.last_error = str(exc)
                if self.fallback.engine_failed():
                    # The engine refused what the cloud may well take: back to the cloud, not a long wait.
                    delay = self.backoff.next_delay()
                    self.set_state("backoff", f"the box's own engine refused ({exc}); trying the cloud again")
                else:
                    delay = FATAL_RETRY_S if exc.error.fatal else CONFIG_RETRY_S
                    self.set_state("failed", f"{exc}; {retrying(delay)}", error_code=exc.error.code)
            if delay:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), delay)

    def _after_failure(self, exc: ConnectFailure) -> float:
        """Set the state a lost or refused connection leaves, and return how long to wait."""
        if self.fallback.engine_failed():
            self.set_state("backoff", f"the box's own engine failed ({exc}): trying the cloud again")
            return self.backoff.next_delay()
        if self.fallback.failed(self.direction.effective(self.config), exc, time.monotonic()):
            self.set_state("connecting", f"the cloud is unreachable ({exc}): to the box's own engine")
            return 0.0
        if exc.fatal:
            self.set_state("failed", f"{exc}; {retrying(FATAL_RETRY_S)}")
            return FATAL_RETRY_S
        if self.short_lived >= FLAPPING_LIMIT:
            delay = max(CONFIG_RETRY_S, self.backoff.next_delay())
            self.set_state(
                "failed",
                f"the service closed {self.short_lived} connections in a row within {STABLE_S:.0f} s "
                f"of opening them (last: {exc}); {retrying(delay)}",
            )
            return delay
        floor = exc.retry_after_s if exc.retry_after_s is not None else 0.0
        if exc.throttled and exc.retry_after_s is None:
            floor = THROTTLED_FLOOR_S
        delay = self.backoff.next_delay(floor_s=floor)
        why = f"; {self.fallback.unservable}" if self.fallback.unservable else ""
        self.set_state("backoff", f"retry in {delay:.1f} s after: {exc}{why}")
        return delay

    async def _session(self, key: str | None) -> None:
        """One connection, from handshake to close. Returns when it closed cleanly."""
        service = self.config.service
        url = self.fallback.url(self.config)  # the cloud, or the box's own engine ([service] backend)
        await self.pacing.turn(lambda why: self.set_state("backoff", why))
        self.set_state("connecting", url)
        ws = await connect_service(url, service.model, key, service.connect_timeout_s)
        self._ws = ws
        opened = time.monotonic()
        sender: asyncio.Task[None] | None = None
        watchers: list[asyncio.Task[None]] = []
        clean = False
        try:
            created = await self.expect(ws, "session.created", service.connect_timeout_s)
            session = created.get("session")
            ident = session.get("id") if isinstance(session, dict) else None
            self.session_id = ident if isinstance(ident, str) else ""
            logs.annotate(session_id=self.session_id)  # every later log line carries it
            sent = self.direction.effective(self.config)
            self.set_state("configuring", f"{sent.languages.source} → {sent.languages.target}")
            self.direction.new_connection()  # this session.update carries the direction already
            await self._send(ws, protocol.session_update(sent, self.ids.next()))
            self.follow_output_rate(await self.expect(ws, "session.updated", service.connect_timeout_s))
            self._go_live()
            if protocol.session_config(self.direction.effective(self.config)) != protocol.session_config(sent):
                # The config changed while the service was taking the previous one.
                self.direction_changed()
            sender = self.spawn(self._send_loop(ws), "sender")
            watchers = [
                self.spawn(self._rotate(ws), "rotate"),
                self.spawn(self._watch_stall(ws), "stall"),
                self.spawn(self._watch_liveness(ws), "liveness"),
            ]
            if self.fallback.active:
                watchers.append(self.spawn(self._watch_cloud(ws), "cloud-probe"))
            await self.receive(ws)
            clean = True
        except ConnectionClosed as exc:
            why, self.stalled = self.stalled or f"connection closed: {close_reason(exc)}", ""
            raise ConnectFailure(why) from None
        finally:
            for task in (sender, *watchers):
                if task is not None:
                    task.cancel()
            # A connection the service answered on did useful work, however short it was.
            if time.monotonic() - opened >= STABLE_S or self._answers:
                self.backoff.reset()
                self.short_lived = 0
            elif not clean:
                self.short_lived += 1
                self.count("short_lived_connections")
            current = asyncio.current_task()
            # Shutting down: stop() still finishes the session on this connection.
            if current is None or not current.cancelling():
                self._after_connection(clean)
                self._live = False
                self._ws = None
                self.connection_lost()
                await ws.close()

    def _after_connection(self, clean: bool) -> None:
        """What the service had not answered when the connection was lost goes first on the next."""
        if clean:
            self.outgoing.settle_all()  # finished (session.finish) or closed at a pause: all answered
        elif requeued := self.outgoing.requeue_unsettled():
            self.count("chunks_requeued", requeued)
            self.log.info("%d unanswered chunks go again on the next connection", requeued)
        self.publish_settled()

    def dispatch(self, event: dict[str, Any], received_ns: int) -> None:
        super().dispatch(event, received_ns)
        if event.get("type") == "response.done":
            self._answers += 1
            self.outgoing.settle_answered()
            self.publish_settled()

    def _go_live(self) -> None:
        self._answers = 0
        self.fallback.went_live()
        self._live = True
        self.ending = False
        self._audio_sent = False
        self.stalled = ""
        self.captions.new_session()
        self.activity.reset()
        self.set_state("live", protocol.live_detail(self.direction.effective(self.config)))
        self.mark_fresh()

    async def _send_loop(self, ws: ClientConnection) -> None:
        """Audio in order, then (after the first audio) the camera frame when one may go."""
        try:
            while True:
                await self.outgoing.wait()
                await self._send_pending(ws)
        except ConnectionClosed:
            return  # the receiver reports the close

    def _visitor_changed(self) -> None:
        self._follow_direction()  # captions and the update to the service follow
        self.direction_changed()
        self.publish_status()

    def direction_changed(self) -> None:
        """A new direction (conversation mode): the sender sends it before any more audio."""
        self.outgoing.wake()

    async def _send_switch(self, ws: ClientConnection) -> None:
        """A direction change, then the utterance to translate again the other way, if any.

        Sent from the sender only, so that no live audio lands between the two.
        """
        due, replay = self.direction.take_switch()
        if not due:
            return
        effective = self.direction.effective(self.config)
        await self._send(ws, protocol.session_update(effective, self.ids.next()))
        self.set_state("live", protocol.live_detail(effective))
        step = self.outgoing.chunk_bytes
        for start in range(0, len(replay), step):
            chunk = replay[start : start + step]
            await self._send(ws, protocol.audio_append(chunk, self.ids.next()))
            self.count("chunks_resent")
            self.count("audio_seconds_sent", len(chunk) / (protocol.INPUT_RATE * protocol.BYTES_PER_SAMPLE))

    async def _send_pending(self, ws: ClientConnection) -> None:
        if self._live:
            await self._send_switch(ws)
        # A session that just started holds its backlog until capture's replay is in (resume.py).
        while self._live and not self.intake.resuming and (chunk := self.outgoing.peek_audio()) is not None:
            await self._send(ws, protocol.audio_append(chunk, self.ids.next()))
            self.outgoing.pop_audio()
            self.direction.sent(chunk)
            self.activity.sent(chunk, time.monotonic())
            self._audio_sent = True
            self.count("chunks_sent")
            self.count("audio_seconds_sent", len(chunk) / (protocol.INPUT_RATE * protocol.BYTES_PER_SAMPLE))
            self.mark_fresh()
        self.publish_settled()
        # The service requires an audio append before the first image.
        if self._live and self._audio_sent and (frame := self.outgoing.take_image()) is not None:
            await self._send(ws, protocol.image_append(frame.jpeg, self.ids.next()))
            self.count("images_sent")
            size = (frame.width, frame.height) if frame.width and frame.height else protocol.jpeg_size(frame.jpeg)
            self.usage.add_image(protocol.image_tokens(*(size or (0, 0)), tile=self.config.profile.image_tile_px))

    async def _restart_session(self, why: str) -> None:
        self.backoff.reset()
        if why == RESTART_REQUESTED:
            self.fallback.reset()  # a person asked: the cloud first, as at start
        ws = self._ws
        if ws is not None and self._live:
            await self._end_session(ws, why)  # the connection loop reconnects at once
            return
        if ws is not None:
            await ws.close()  # a handshake in progress: give it up
        self._wake.set()

    # --- bus inputs ------------------------------------------------------------------------------

    async def _read_audio(self) -> None:
        async for msg in self._audio:
            assert isinstance(msg, AudioIn | AudioReplay)
            if msg.rate != protocol.INPUT_RATE:
                self.count("audio_in_rejected")
                continue
            if isinstance(msg, AudioIn):
                self.intake.live(msg)
            elif self.intake.replay(msg):
                self._resumed()
            self.counters["backlog_dropped"] = self.outgoing.dropped

    async def _resume(self) -> None:
        """Ask capture for what no session settled (a crash left it unanswered), until it answers."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RESUME_WAIT_S
        while self.intake.resuming and loop.time() < give_up:
            self.bus.publish(AudioResume())
            await asyncio.sleep(RESUME_REPEAT_S)
        if self.intake.resuming:
            self.log.info("no replay from capture within %.0f s: live audio only", RESUME_WAIT_S)
            self.intake.done()

    def _resumed(self) -> None:
        self.counters["chunks_replayed"] = self.intake.replayed
        if self.intake.replayed:
            self.log.info("capture replayed %d periods no session had settled", self.intake.replayed)

    def publish_settled(self) -> None:
        """Tell capture how far its audio needs no replay (only when that changed)."""
        if self.intake.resuming:
            return  # what a crashed session left is not known here yet: say nothing of it
        seq = self.outgoing.settled_seq
        if seq != self._settled_published:
            self._settled_published = seq
            self.bus.publish(AudioSettled(through_seq=seq))

    async def _read_video(self) -> None:
        async for msg in self._video:
            assert isinstance(msg, VideoFrame)
            problem = protocol.image_problem(msg.jpeg)
            if problem is not None:
                self.count("images_rejected")
                self.log.debug("camera frame not sent: %s", problem)
                continue
            self.outgoing.add_image(msg)

    async def _read_commands(self) -> None:
        async for msg in self._commands:
            assert isinstance(msg, Command)
            if msg.name == "restart-session":
                self.log.info("restart-session requested")
                self.acknowledge(msg, "the session reconnects")
                await self._restart_session(RESTART_REQUESTED)
            elif msg.name == "direction":
                refused = self.on_direction_command(msg.args.get("direction"))
                self.acknowledge(msg, refused or "the session follows", ok=not refused)
            elif msg.name == "visitor-language":
                refused = self.visitor.choose(msg.args.get("language"), self.config)
                self.acknowledge(msg, refused or "the session translates into it from now on", ok=not refused)

    async def _follow_playback(self) -> None:
        """A barge-in stopped a response: the rest of its audio is not sent to the speaker."""
        async for msg in self._playback:
            assert isinstance(msg, PlaybackState)
            if msg.state == "interrupted" and msg.response_id:
                self.interrupted = msg.response_id
                self.log.info("barge-in: the rest of response %s is not played", msg.response_id)

    # --- config and shutdown ---------------------------------------------------------------------

    async def apply_config(self, new: config_mod.Config, changed: set[str]) -> None:
        old, self.config = self.config, new
        self.direction.configure(new.languages)
        self.visitor.configured(new)
        self.direction.take_switch()  # a new config goes out whole, below
        effective = self.direction.effective(new)
        self.captions.source, self.captions.target = effective.languages.source, effective.languages.target
        self.outgoing.set_chunk_ms(new.service.chunk_ms, new.service.backlog_s)
        if _endpoint(old) != _endpoint(new) or KEY_SECTION in changed:
            self.fallback.reset()
            why = "the API key changed" if KEY_SECTION in changed else "service url or model changed"
            await self._restart_session(why)
            return
        ws = self._ws
        if changed & {"languages", "output", "translation"} and self._live and ws is not None:
            self.log.info("sending the new configuration to the live session")
            with contextlib.suppress(ConnectionClosed):
                await self._send(ws, protocol.session_update(effective, self.ids.next()))
            self.set_state("live", protocol.live_detail(effective))
        elif self.session_state == "failed":
            self._wake.set()  # the change may be what was missing (a key file, a voice)

    async def stop(self) -> None:
        ws = self._ws
        if ws is not None and self._live:
            # Send what the microphone still held, then end the session the documented way.
            self.outgoing.flush_partial()
            with contextlib.suppress(ConnectionClosed):
                await self._send_pending(ws)
            reader = asyncio.create_task(self.receive(ws), name="session:final-events")
            # Within the lifecycle's stop budget, leaving time for the close handshake.
            await self._end_session(ws, "shutting down", limit_s=STOP_TIMEOUT_S - 3.0)
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionClosed, ConnectFailure):
                await reader
            self.outgoing.settle_all()  # finished: the service has it all
            self.publish_settled()
        elif ws is not None:
            await ws.close()
        self._live = False
        self._ws = None
        self.set_state("stopped")



def _endpoint(cfg: config_mod.Config) -> tuple[str, str, str]:
    return session_url(cfg), cfg.service.model, cfg.service.backend
