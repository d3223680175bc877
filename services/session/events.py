"""What the session does with each server event: audio and captions onto the bus, usage, errors.

A malformed event is counted and skipped, an unknown one logged once; neither stops the session.
An ``error`` is logged and remembered; only auth/quota codes end the session (``failed``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from websockets.asyncio.client import ClientConnection

from daemon.messages import AudioOut
from daemon.service import Service
from services.session import protocol
from services.session.captions import CaptionAssembler
from services.session.connection import ConnectFailure
from services.session.direction import Direction
from services.session.pause import Activity
from services.session.usage import UsageMeter

_MAX_UNKNOWN_LOGGED = 100


class ServiceRejected(Exception):
    """The service answered a handshake step with an ``error`` event."""

    def __init__(self, step: str, error: protocol.ServiceError) -> None:
        super().__init__(f"the service refused {step}: {error}")
        self.step = step
        self.error = error


class EventHandler(Service):
    """The receiving half of the session service (the connection loop lives in service.py)."""

    def setup_events(self) -> None:
        cfg = self.config
        self.direction = Direction(cfg.languages)
        sides = self.direction.effective(cfg).languages
        self.captions = CaptionAssembler(sides.source, sides.target)
        self.activity = Activity()
        self.usage = UsageMeter()
        self.finished = asyncio.Event()
        self.ending = False
        self.fatal: protocol.ServiceError | None = None
        self.stalled = ""  # why the connection was given up as stalled
        self._unknown: set[str] = set()
        self._audio_responses: dict[str, int] = {}  # response id -> audio deltas, while open
        #: The response a barge-in stopped (playback says so): the rest of its audio stays here.
        self.interrupted = ""
        #: The speech's sample rate, as the service's last ``session.updated`` said it.
        self.output_rate = protocol.OUTPUT_RATE

    async def expect(self, ws: ClientConnection, wanted: str, timeout_s: float) -> dict[str, Any]:
        """Read until ``wanted`` arrives; an ``error`` first raises ServiceRejected."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            left = deadline - loop.time()
            try:
                if left <= 0:
                    raise TimeoutError
                raw = await asyncio.wait_for(ws.recv(), left)
            except TimeoutError:
                raise ConnectFailure(f"no {wanted} from the service within {timeout_s:.0f} s") from None
            event = self.parse(raw)
            if event is None:
                continue
            if event["type"] == wanted:
                self.mark_fresh()
                return event
            if event["type"] == "error":
                step = "the connection" if wanted == "session.created" else "the configuration"
                raise ServiceRejected(step, protocol.service_error(event))
            self.dispatch(event, time.monotonic_ns())

    async def receive(self, ws: ClientConnection) -> None:
        """Handle events until the connection closes; raises ConnectFailure unless we closed it."""
        async for raw in ws:
            received = time.monotonic_ns()
            event = self.parse(raw)
            if event is not None:
                self.dispatch(event, received)
            if self.fatal is not None:
                error, self.fatal = self.fatal, None
                await ws.close()
                raise ConnectFailure(f"the service reported {error}", fatal=True)
        if self.stalled:
            why, self.stalled = self.stalled, ""
            raise ConnectFailure(why)
        if not self.ending:
            reason = f"code {ws.close_code}" + (f" ({ws.close_reason})" if ws.close_reason else "")
            raise ConnectFailure(f"the service closed the connection: {reason}")

    def parse(self, raw: str | bytes) -> dict[str, Any] | None:
        try:
            return protocol.parse(raw)
        except protocol.ProtocolError as exc:
            self.malformed(exc)
            return None

    def malformed(self, exc: Exception) -> None:
        self.count("malformed_events")
        seen = self.counters["malformed_events"]
        if seen <= 5 or seen % 100 == 0:
            self.log.warning("malformed event #%d skipped: %s", seen, exc)

    def dispatch(self, event: dict[str, Any], received_ns: int) -> None:
        kind = event["type"]
        self.mark_fresh()
        self.activity.event()
        try:
            if self.direction.suppressed(event, self.captions.source, self.captions.target):
                self._on_wrong_direction(event)
            elif kind == "response.audio.delta":
                rid = _response_id(event)
                pcm = protocol.audio_delta(event)
                self.count("deltas_received")
                if rid in self._audio_responses:
                    self._audio_responses[rid] += 1
                if rid and rid == self.interrupted:
                    self.count("deltas_after_barge_in")
                else:
                    self.bus.publish(AudioOut(pcm=pcm, rate=self.output_rate, response_id=rid, t=received_ns))
            elif kind == "response.audio.done":
                # An empty AudioOut ends the response: playback plays what it holds without
                # waiting for its start threshold (a short reply must not wait).
                if (rid := _response_id(event)) != self.interrupted or not rid:
                    self.bus.publish(AudioOut(pcm=b"", rate=self.output_rate, response_id=rid, t=received_ns))
            elif (caption := self.captions.feed(event)) is not None:
                self.bus.publish(caption)
            elif kind == "response.created":
                self._on_response_created(event)
            elif kind == "response.done":
                self._on_response_done(event)
            elif kind == "error":
                self._on_error(protocol.service_error(event))
            elif kind == "session.finished":
                self.finished.set()
            elif kind == "session.updated":
                self.log.info("the service accepted the new configuration")
                self.follow_output_rate(event)
            elif kind not in protocol.SERVER_EVENT_TYPES and kind not in self._unknown:
                self._log_unknown(kind)
        except protocol.ProtocolError as exc:
            self.malformed(exc)
        self._follow_direction()

    def follow_output_rate(self, updated: dict[str, Any]) -> None:
        """Speech comes at the rate ``session.updated`` names (24 kHz unless it says otherwise)."""
        try:
            rate = protocol.output_rate(updated)
        except protocol.ProtocolError as exc:
            self.malformed(exc)
            return
        if rate is not None and rate != self.output_rate:
            self.log.info("the service speaks at %d Hz", rate)
            self.output_rate = rate

    def on_direction_command(self, direction: object) -> str:
        """A button (screen, GPIO) or POST /api/direction, through the bus; why it was refused, or ""."""
        try:
            what = self.direction.command(direction)
        except ValueError as exc:
            self.log.warning("direction command refused: %s", exc)
            return f"refused: {exc}"
        self.log.info("direction command: %s", what)
        self._follow_direction()
        self.direction_changed()  # the sender sends the update, if one is due
        return ""

    def _follow_direction(self) -> None:
        """When the direction changed (heard the other side, or a turn ended): captions and sender follow."""
        sides = self.direction.effective(self.config).languages
        if (sides.source, sides.target) != (self.captions.source, self.captions.target):
            self.captions.source, self.captions.target = sides.source, sides.target
            self.log.info("now translating %s → %s", sides.source, sides.target)
            self.direction_changed()

    def _on_wrong_direction(self, event: dict[str, Any]) -> None:
        """An utterance heard in the other side's language: no output; the switch goes out now."""
        kind = event["type"]
        self.count("wrong_direction_events")
        if kind == "response.created":
            self._on_response_created(event)
        elif kind == "response.done":
            self._on_response_done(event)

    def _log_unknown(self, kind: str) -> None:
        if len(self._unknown) < _MAX_UNKNOWN_LOGGED:
            self._unknown.add(kind)
            self.log.info("unknown event type %r ignored (logged once)", kind[:80])

    def _on_error(self, error: protocol.ServiceError) -> None:
        self.count("errors_received")
        self.last_error = str(error)
        if error.fatal:
            self.log.error("service error, giving up: %s", error)
            self.fatal = error
        else:
            self.log.warning("service error: %s", error)
        self.publish_status()

    def _on_response_created(self, event: dict[str, Any]) -> None:
        response = event.get("response")
        rid = response.get("id") if isinstance(response, dict) else None
        if isinstance(rid, str) and rid:
            self.activity.response_started(rid)
            if len(self._audio_responses) < 64:
                self._audio_responses[rid] = 0

    def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        ident = response.get("id")
        rid = ident if isinstance(ident, str) else ""
        status = response.get("status")
        self.count("responses")
        deltas = self._audio_responses.pop(rid, None)
        if status not in (None, "completed"):
            self.count("responses_interrupted")
            self.log.info("response %s ended %s after %s audio deltas", rid, status, deltas)
        self.activity.response_ended(rid, time.monotonic())
        delta = protocol.usage(event)
        if delta is not None:
            self.usage.add_response(delta)
            self.publish_usage()

    def connection_lost(self) -> None:
        """What was open when a connection ended must not hang on the screen or in the speaker."""
        for caption in self.captions.close_open():
            self.bus.publish(caption)
        for rid in self._audio_responses:
            self.bus.publish(AudioOut(pcm=b"", rate=self.output_rate, response_id=rid))
        self._audio_responses.clear()
        self.activity.reset()

    def publish_usage(self) -> None:
        service = self.config.service
        self.bus.publish(
            self.usage.message(
                self.counters.get("audio_seconds_sent", 0.0),
                service.price_per_million_input_tokens,
                service.price_per_million_output_tokens,
            )
        )

    # Provided by the session service.
    last_error: str

    def publish_status(self) -> None:
        raise NotImplementedError

    def direction_changed(self) -> None:
        raise NotImplementedError


def _response_id(event: dict[str, Any]) -> str:
    rid = event.get("response_id")
    return rid if isinstance(rid, str) else ""
