"""The simulator's server: what its handshake refuses, per-connection logs, and the recording.

The endpoint itself is the shared one (``daemon.realtime.server``). ``Simulator`` runs in the
caller's event loop (``async with Simulator(...) as sim``), or in a thread of its own for tests
that drive processes synchronously (``running_in_thread``). What it saw is kept for assertions:
``events`` (every client event, payloads replaced by their decoded byte length), ``audio_in``
(the audio appended, in arrival order), ``appends``, ``violations`` (every documented rule the
client broke), ``attempts`` (handshakes, refused ones included) and ``connections``. Memory
stays bounded: past the caps the oldest are dropped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import IO, Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from daemon.realtime.profiles import UnknownModel, profile_for
from daemon.realtime.server import RealtimeServer, refuse
from services.simulator.conversation import Conversation
from services.simulator.faults import Faults, FaultSpecError

log = logging.getLogger("tolk.simulator")

MAX_EVENTS = 200_000
MAX_AUDIO_BYTES = 64 * 2**20  # about 35 minutes of 16 kHz audio
MAX_VIOLATIONS = 10_000


@dataclass
class ConnectionLog:
    number: int
    model: str
    authorization: str | None
    faults: Faults
    events: int = 0
    audio_bytes: int = 0
    appends: int = 0
    finished: bool = False
    responses: int = 0
    violations: list[str] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)  # what was appended on this connection (capped)
    sent: list[str] = field(default_factory=list)  # types of the server events sent, in order
    # For a bench that follows each utterance (bench/ledger.py), on time.monotonic_ns(), shared
    # with the box's processes: when it opened and closed, how it closed, and each append.
    opened_ns: int = 0
    closed_ns: int = 0
    close_code: int | None = None
    marks: list[AppendMark] = field(default_factory=list)  # capped at MAX_EVENTS
    utterances: int = 0  # utterances the simulator heard end on this connection (at close)
    replies: int = 0  # responses it began on this connection (at close)


@dataclass(frozen=True)
class AppendMark:
    """One append as it arrived: where its audio lies in ``ConnectionLog.audio``, and how many
    utterances had ended and responses begun on the connection before it."""

    t_ns: int
    offset: int
    size: int
    utterances_before: int
    replies_before: int


class Recorder:
    """``FILE``: one JSON line per client event; ``FILE.pcm``: the raw audio; flushed as they come."""

    def __init__(self, path: Path) -> None:
        # Open for the simulator's whole life, closed by close().
        self.events: IO[str] = path.open("w", encoding="utf-8")
        self.audio: IO[bytes] = Path(f"{path}.pcm").open("wb")  # noqa: SIM115

    def write(self, entry: dict[str, Any], pcm: bytes = b"") -> None:
        self.events.write(json.dumps(entry, ensure_ascii=False) + "\n")
        self.events.flush()
        if pcm:
            self.audio.write(pcm)
            self.audio.flush()

    def close(self) -> None:
        self.events.close()
        self.audio.close()


class Simulator(RealtimeServer[Conversation]):
    log = log
    max_frame_bytes = 2**22

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        faults: Faults | None = None,
        api_key: str | None = None,
        record: str | Path | None = None,
        pace_s: float = 0.01,
        threshold_rms: float = 500.0,
        min_speech_ms: int = 250,
        end_silence_ms: int = 600,
        voice: bytes | None = None,
        output_rate: int = 24000,
    ) -> None:
        super().__init__(host, port)
        #: The speech's sample rate on qwen3.8 (its session.updated names it; the others are 24 kHz).
        self.output_rate = output_rate
        #: 24 kHz mono s16le speech the answers are cut from; None: a tone per answer.
        self.voice = voice
        self.faults = faults or Faults()
        self.api_key = api_key
        self.pace_s = pace_s
        self.endpointer_options: dict[str, Any] = {
            "threshold_rms": threshold_rms,
            "min_speech_ms": min_speech_ms,
            "end_silence_ms": end_silence_ms,
        }
        self.record_path = Path(record) if record else None
        self.refused = 0
        self.responses = 0
        self.appends = 0
        self.audio_dropped = 0
        self.events: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.audio_in = bytearray()
        self.connections: list[ConnectionLog] = []
        self._handshakes: dict[int, ConnectionLog] = {}
        self._down_until = 0.0
        self._outages = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._recorder: Recorder | None = None

    async def start(self, sock: socket.socket | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        if self.record_path is not None:
            self._recorder = Recorder(self.record_path)
        await super().start(sock)
        log.info("simulator listening on %s (faults: %s)", self.url, self.faults.describe())

    async def stop(self) -> None:
        await super().stop()
        if self._recorder is not None:
            self._recorder.close()
            self._recorder = None

    async def __aenter__(self) -> Simulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- handshake and connections -----------------------------------------------------------

    def admit(
        self, connection: ServerConnection, request: Request, model: str, query: dict[str, list[str]]
    ) -> Response | None:
        try:
            profile_for(model)  # every profile the box knows, and their dated snapshots
        except UnknownModel:
            return refuse(connection, HTTPStatus.NOT_FOUND, "ModelNotFound", f"model {model!r} not found")
        faults = self.faults
        if "faults" in query:
            try:
                faults = Faults.parse(query["faults"][0])
            except FaultSpecError as exc:
                return refuse(connection, HTTPStatus.BAD_REQUEST, "InvalidParameter", str(exc))
        if self._loop is not None and self._loop.time() < self._down_until:
            self.refused += 1
            return refuse(connection, 503, "ServiceUnavailable", "outage (simulated)", faults.retry_after_s)
        if faults.refuse_status is not None and (faults.refuse_times is None or self.refused < faults.refuse_times):
            self.refused += 1
            code = {401: "InvalidApiKey", 403: "AccessDenied", 429: "Throttling.RateQuota"}.get(faults.refuse_status)
            return refuse(
                connection, faults.refuse_status, code or "Refused", "refused (simulated)", faults.retry_after_s
            )
        authorization = request.headers.get("Authorization")
        if self.api_key is not None and authorization != f"Bearer {self.api_key}":
            return refuse(connection, HTTPStatus.UNAUTHORIZED, "InvalidApiKey", "invalid API key")
        record = ConnectionLog(len(self.connections) + 1, model, authorization, faults)
        self._handshakes[id(connection)] = record
        return None

    async def open(self, ws: ServerConnection) -> Conversation:
        record = self._handshakes.pop(id(ws))
        record.opened_ns = time.monotonic_ns()
        self.connections.append(record)
        return Conversation(self, ws, record.faults, record)

    def closed(self, conversation: Conversation) -> None:
        record = conversation.record
        record.closed_ns = time.monotonic_ns()
        record.close_code = conversation.ws.close_code
        record.utterances, record.replies = conversation.endpointer.utterances, conversation.replies
        violations = len(record.violations)
        log.info("connection %d closed (%d events, %d violations)", record.number, record.events, violations)

    # --- recording ---------------------------------------------------------------------------

    def record_event(self, record: ConnectionLog, event: dict[str, Any], payload: bytes) -> None:
        entry = dict(event)
        for key in ("audio", "image"):
            if key in entry:
                entry[key] = len(payload)
        record.events += 1
        self._keep(entry)
        pcm = payload if event["type"] == "input_audio_buffer.append" else b""
        if pcm:
            self._mark(record, len(pcm))
            record.appends += 1
            record.audio_bytes += len(pcm)
            if len(record.audio) < MAX_AUDIO_BYTES:
                record.audio += pcm
            self.appends += 1
            self.audio_in += pcm
            if len(self.audio_in) > MAX_AUDIO_BYTES:
                excess = len(self.audio_in) - MAX_AUDIO_BYTES
                del self.audio_in[:excess]
                self.audio_dropped += excess
        if self._recorder is not None:
            self._recorder.write(entry, pcm)

    def _mark(self, record: ConnectionLog, size: int) -> None:
        conversation = self.live.get(record.number)
        if conversation is None or len(record.marks) >= MAX_EVENTS:
            return
        heard, replies = conversation.endpointer.utterances, conversation.replies
        record.marks.append(AppendMark(time.monotonic_ns(), record.audio_bytes, size, heard, replies))

    def record_frame(self, record: ConnectionLog, raw: str | bytes, rejected: str = "") -> None:
        """A frame that is not an accepted event: kept as far as it can be read."""
        entry: dict[str, Any]
        try:
            parsed = json.loads(raw) if isinstance(raw, str) else None
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            entry = {
                k: (len(v) if k in ("audio", "image") and isinstance(v, str) else v)
                for k, v in parsed.items()
            }
        else:
            entry = {"frame": raw[:200] if isinstance(raw, str) else f"<{len(raw)} binary bytes>"}
        if rejected:
            entry["simulator.rejected"] = rejected
        record.events += 1
        self._keep(entry)
        if self._recorder is not None:
            self._recorder.write(entry)

    def violation(self, record: ConnectionLog, message: str) -> None:
        line = f"connection {record.number}: {message}"
        log.warning("client violation: %s", line)
        record.violations.append(message)
        self.violations.append(line)
        del self.violations[:-MAX_VIOLATIONS]
        del record.violations[:-MAX_VIOLATIONS]

    def _keep(self, entry: dict[str, Any]) -> None:
        self.events.append(entry)
        if len(self.events) > MAX_EVENTS:
            del self.events[: MAX_EVENTS // 10]

    def events_of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.events) if e.get("type") == kind]

    def begin_outage(self, seconds: float) -> bool:
        """Refuse every handshake for ``seconds`` (once per simulator); False if one already began."""
        if self._outages or self._loop is None:
            return False
        self._outages += 1
        self._down_until = self._loop.time() + seconds
        return True

    async def inject(self, frames: list[str | bytes]) -> int:
        """Send raw frames on every open connection, as they are; how many connections got them."""
        conversations = list(self.live.values())
        for conversation in conversations:
            for frame in frames:
                await conversation.send(frame)
        return len(conversations)

    def inject_threadsafe(self, frames: list[str | bytes], timeout_s: float = 10.0) -> int:
        """``inject`` from another thread (tests that run the simulator with ``running_in_thread``)."""
        assert self._loop is not None, "the simulator is not running"
        return asyncio.run_coroutine_threadsafe(self.inject(frames), self._loop).result(timeout_s)


@contextmanager
def running_in_thread(**options: Any) -> Iterator[Simulator]:
    """A Simulator on its own event loop thread, for tests that drive processes synchronously.

    Its lists may be read from the calling thread (copy them first: ``list(sim.events)``).
    """
    loop = asyncio.new_event_loop()
    sim = Simulator(**options)
    started = threading.Event()
    failure: list[BaseException] = []

    def serve_forever() -> None:
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(sim.start())
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)
            started.set()
            return
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve_forever, name="simulator", daemon=True)
    thread.start()
    started.wait(10)
    if failure:
        loop.close()
        raise failure[0]
    try:
        yield sim
    finally:
        asyncio.run_coroutine_threadsafe(sim.stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
