"""What the session does with each server event: speech, captions and usage onto the bus, errors.

A malformed event is counted and skipped, an unknown one logged once; neither stops the session.
An ``error`` is counted, logged and handed to the owner (the status shows it); ``handle`` returns
one with an auth/quota code, and the connection then ends ``failed``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from daemon.messages import AudioOut
from daemon.service import Service
from services.session import protocol
from services.session.captions import CaptionAssembler
from services.session.direction import Direction
from services.session.pause import Activity
from services.session.usage import UsageMeter

_MAX_UNKNOWN_LOGGED = 100
#: Responses whose audio deltas are tracked at once (a misbehaving service cannot grow it).
_MAX_OPEN_RESPONSES = 64


class EventHandler:
    """Server events in, bus messages out. Knows nothing of the connection they came on."""

    def __init__(
        self,
        process: Service,
        direction: Direction,
        activity: Activity,
        usage: UsageMeter,
        on_error: Callable[[protocol.ServiceError], None],
        wake_sender: Callable[[], None],
    ) -> None:
        self.process = process  # bus, counters, log, config
        self.direction = direction
        self.activity = activity
        self.usage = usage
        self._on_error = on_error  # the owner remembers it as the last error and says so
        self._wake_sender = wake_sender  # a direction change goes out before more audio
        sides = direction.effective(process.config).languages
        self.captions = CaptionAssembler(sides.source, sides.target)
        self._unknown: set[str] = set()
        self._audio_responses: dict[str, int] = {}  # response id -> audio deltas, while open
        #: The response a barge-in stopped (playback says so): the rest of its audio stays here.
        self.interrupted = ""
        #: The speech's sample rate, as the service's last ``session.updated`` said it.
        self.output_rate = protocol.OUTPUT_RATE

    def parse(self, raw: str | bytes) -> dict[str, Any] | None:
        """The event, or None (counted and logged) when it is malformed."""
        try:
            return protocol.parse(raw)
        except protocol.ProtocolError as exc:
            self._malformed(exc)
            return None

    def handle(self, event: dict[str, Any], received_ns: int) -> protocol.ServiceError | None:
        """Act on one event; returns the error it reported if that ends the session (a refused key)."""
        kind = event["type"]
        fatal = None
        self.process.mark_fresh()
        self.activity.event()
        try:
            if self.direction.suppressed(event, self.captions.source, self.captions.target):
                self._on_wrong_direction(event)
            elif kind == "response.audio.delta":
                self._on_audio(event, received_ns)
            elif kind == "response.audio.done":
                # An empty AudioOut ends the response: playback plays what it holds without
                # waiting for its start threshold (a short reply must not wait).
                if (rid := _response_id(event)) != self.interrupted or not rid:
                    self._publish_audio(b"", rid, received_ns)
            elif (caption := self.captions.feed(event)) is not None:
                self.process.bus.publish(caption)
            elif kind == "response.created":
                self._on_response_created(event)
            elif kind == "response.done":
                self._on_response_done(event)
            elif kind == "error":
                fatal = self._on_service_error(protocol.service_error(event))
            elif kind == "session.updated":
                self.process.log.info("the service accepted the new configuration")
                self.follow_output_rate(event)
            elif kind not in protocol.SERVER_EVENT_TYPES and kind not in self._unknown:
                self._log_unknown(kind)
        except protocol.ProtocolError as exc:
            self._malformed(exc)
        self.follow_direction()
        return fatal

    def follow_output_rate(self, updated: dict[str, Any]) -> None:
        """Speech comes at the rate ``session.updated`` names (24 kHz unless it says otherwise)."""
        try:
            rate = protocol.output_rate(updated)
        except protocol.ProtocolError as exc:
            self._malformed(exc)
            return
        if rate is not None and rate != self.output_rate:
            self.process.log.info("the service speaks at %d Hz", rate)
            self.output_rate = rate

    def follow_direction(self) -> None:
        """When the direction changed (heard the other side, a turn ended, a command): captions and sender follow."""
        sides = self.direction.effective(self.process.config).languages
        if (sides.source, sides.target) != (self.captions.source, self.captions.target):
            self.captions.source, self.captions.target = sides.source, sides.target
            self.process.log.info("now translating %s → %s", sides.source, sides.target)
            self._wake_sender()

    def new_connection(self) -> None:
        """A connection went live: captions start afresh."""
        self.captions.new_session()

    def connection_lost(self) -> None:
        """What was open when a connection ended must not hang on the screen or in the speaker."""
        for caption in self.captions.close_open():
            self.process.bus.publish(caption)
        for rid in self._audio_responses:
            self.process.bus.publish(AudioOut(pcm=b"", rate=self.output_rate, response_id=rid))
        self._audio_responses.clear()
        self.activity.reset()

    def publish_usage(self) -> None:
        service = self.process.config.service
        self.process.bus.publish(
            self.usage.message(
                self.process.counters.get("audio_seconds_sent", 0.0),
                service.price_per_million_input_tokens,
                service.price_per_million_output_tokens,
            )
        )

    # --- one kind of event each ------------------------------------------------------------------

    def _on_audio(self, event: dict[str, Any], received_ns: int) -> None:
        rid = _response_id(event)
        pcm = protocol.audio_delta(event)
        self.process.count("deltas_received")
        if rid in self._audio_responses:
            self._audio_responses[rid] += 1
        if rid and rid == self.interrupted:
            self.process.count("deltas_after_barge_in")
        else:
            self._publish_audio(pcm, rid, received_ns)

    def _publish_audio(self, pcm: bytes, rid: str, received_ns: int) -> None:
        self.process.bus.publish(AudioOut(pcm=pcm, rate=self.output_rate, response_id=rid, t=received_ns))

    def _on_wrong_direction(self, event: dict[str, Any]) -> None:
        """An utterance heard in the other side's language: no output; the switch goes out now."""
        kind = event["type"]
        self.process.count("wrong_direction_events")
        if kind == "response.created":
            self._on_response_created(event)
        elif kind == "response.done":
            self._on_response_done(event)

    def _on_service_error(self, error: protocol.ServiceError) -> protocol.ServiceError | None:
        self.process.count("errors_received")
        if error.fatal:
            self.process.log.error("service error, giving up: %s", error)
        else:
            self.process.log.warning("service error: %s", error)
        self._on_error(error)
        return error if error.fatal else None

    def _on_response_created(self, event: dict[str, Any]) -> None:
        response = event.get("response")
        rid = response.get("id") if isinstance(response, dict) else None
        if isinstance(rid, str) and rid:
            self.activity.response_started(rid)
            if len(self._audio_responses) < _MAX_OPEN_RESPONSES:
                self._audio_responses[rid] = 0

    def _on_response_done(self, event: dict[str, Any]) -> None:
        response = event.get("response")
        response = response if isinstance(response, dict) else {}
        ident = response.get("id")
        rid = ident if isinstance(ident, str) else ""
        status = response.get("status")
        self.process.count("responses")
        deltas = self._audio_responses.pop(rid, None)
        if status not in (None, "completed"):
            self.process.count("responses_interrupted")
            self.process.log.info("response %s ended %s after %s audio deltas", rid, status, deltas)
        self.activity.response_ended(rid, time.monotonic())
        delta = protocol.usage(event)
        if delta is not None:
            self.usage.add_response(delta)
            self.publish_usage()

    def _malformed(self, exc: Exception) -> None:
        self.process.count("malformed_events")
        seen = self.process.counters["malformed_events"]
        if seen <= 5 or seen % 100 == 0:
            self.process.log.warning("malformed event #%d skipped: %s", seen, exc)

    def _log_unknown(self, kind: str) -> None:
        if len(self._unknown) < _MAX_UNKNOWN_LOGGED:
            self._unknown.add(kind)
            self.process.log.info("unknown event type %r ignored (logged once)", kind[:80])


def _response_id(event: dict[str, Any]) -> str:
    rid = event.get("response_id")
    return rid if isinstance(rid, str) else ""
