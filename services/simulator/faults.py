"""Faults the simulator injects on purpose, and their one-line spelling.

Spec: comma-separated ``name`` or ``name=value`` items, e.g.
``refuse=401x2,delay=1.5,close_after_audio=3,bursty``:

- ``refuse=STATUS`` / ``refuse=STATUSxN``: answer the handshake with HTTP STATUS (401, 429, ...),
  every time or the first N times, then accept.
- ``delay=S``: wait S seconds after an utterance ends before its response starts.
- ``close_after_audio=S`` / ``close_after_audio=SxN``: close the connection (code 1011) once S seconds
  of audio arrived on it; every connection, or only the first N.
- ``drop_after=S``: close every connection (code 1011) S seconds after it opened, whatever it is
  doing: a link that keeps failing under a conversation.
- ``close_mid_response`` / ``close_mid_response=N``: close the connection (code 1011) right after a
  response's first audio; on every connection, or the first N.
- ``reject_update=MESSAGE``: answer every ``session.update`` with an ``error`` carrying MESSAGE
  (``reject_code=CODE`` sets its code, default ``invalid_value``) and no ``session.updated``.
- ``stall``: accept the connection, read everything, never send anything.
- ``stall_after_audio=S`` / ``stall_after_audio=SxN``: once S seconds of audio arrived, go silent
  (read everything, send nothing, not even ``session.finished``); every connection, or the first N.
- ``error_after_audio=S``: send one ``error`` event per connection once S seconds of audio arrived
  (``error_code=CODE``, default ``internal_error``; ``Arrearage`` or ``InvalidApiKey`` are fatal).
- ``outage=S/D``: once S seconds of audio arrived on the first connection, close it (code
  1011) and refuse every handshake with HTTP 503 for D seconds: a Wi-Fi blip or a service hiccup.
- ``interrupt=K``: the first K responses of each connection are interrupted: the lifecycle runs
  but ``.done`` events come with no text and no audio before them, and ``status`` "incomplete".
- ``retry_after=S``: refusals carry ``Retry-After: S``.
- ``malformed``: before each response, send broken frames (not JSON, no type, binary, bad base64,
  a non-string text, an unknown type).
- ``bursty``: send response events in bunches separated by irregular gaps.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from urllib.parse import unquote


class FaultSpecError(ValueError):
    pass


@dataclass
class Faults:
    refuse_status: int | None = None
    refuse_times: int | None = None  # None: every time
    delay_s: float = 0.0
    close_after_audio_s: float | None = None
    close_after_audio_times: int | None = None  # None: every connection
    close_mid_response: bool = False
    drop_after_s: float | None = None
    close_mid_response_times: int | None = None  # None: every connection
    reject_update: str | None = None
    reject_code: str = "invalid_value"
    stall: bool = False
    malformed: bool = False
    bursty: bool = False
    stall_after_audio_s: float | None = None
    stall_after_audio_times: int | None = None  # None: every connection
    error_after_audio_s: float | None = None
    error_code: str = "internal_error"
    outage_after_audio_s: float | None = None
    outage_s: float = 0.0
    interrupt: int = 0
    retry_after_s: float | None = None

    @classmethod
    def parse(cls, spec: str) -> Faults:
        faults = cls()
        for item in filter(None, (part.strip() for part in spec.split(","))):
            name, _, value = item.partition("=")
            value = unquote(value)
            try:
                faults._set(name.strip(), value)
            except ValueError as exc:
                raise FaultSpecError(f"fault {item!r}: {exc}") from None
        return faults

    def _set(self, name: str, value: str) -> None:
        flags = {"close_mid_response", "stall", "malformed", "bursty"}
        if name == "close_mid_response" and value:
            self.close_mid_response, self.close_mid_response_times = True, int(value)
        elif name in flags:
            if value:
                raise ValueError("takes no value")
            setattr(self, name, True)
        elif name == "refuse":
            status, _, times = value.partition("x")
            self.refuse_status = int(status)
            if not 100 <= self.refuse_status <= 599 or self.refuse_status == 101:
                raise ValueError("an HTTP error status, e.g. 401 or 429")
            self.refuse_times = int(times) if times else None
        elif name == "delay":
            self.delay_s = _seconds(value)
        elif name == "drop_after":
            self.drop_after_s = _seconds(value)
            if not self.drop_after_s:
                raise ValueError("seconds above 0")
        elif name == "close_after_audio":
            seconds, _, times = value.partition("x")
            self.close_after_audio_s = _seconds(seconds)
            self.close_after_audio_times = int(times) if times else None
        elif name == "stall_after_audio":
            seconds, _, times = value.partition("x")
            self.stall_after_audio_s = _seconds(seconds)
            self.stall_after_audio_times = int(times) if times else None
        elif name == "error_after_audio":
            self.error_after_audio_s = _seconds(value)
        elif name == "error_code":
            if not value:
                raise ValueError("an error code, e.g. Arrearage")
            self.error_code = value
        elif name == "outage":
            after, sep, length = value.partition("/")
            if not sep:
                raise ValueError("AFTER/SECONDS, e.g. 1.0/2.5")
            self.outage_after_audio_s, self.outage_s = _seconds(after), _seconds(length)
        elif name == "interrupt":
            self.interrupt = int(value)
            if self.interrupt < 0:
                raise ValueError("a count of responses")
        elif name == "retry_after":
            self.retry_after_s = _seconds(value)
        elif name == "reject_update":
            self.reject_update = value or "session.update refused (simulated)"
        elif name == "reject_code":
            self.reject_code = value
        else:
            known = [
                "refuse",
                "delay",
                "close_after_audio",
                "drop_after",
                "stall_after_audio",
                "error_after_audio",
                "error_code",
                "outage",
                "interrupt",
                "retry_after",
                "reject_update",
                "reject_code",
                *sorted(flags),
            ]
            raise ValueError(f"unknown fault; known: {', '.join(known)}")

    def describe(self) -> str:
        active = [
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if getattr(self, f.name) != f.default
        ]
        return ", ".join(active) or "none"


def _seconds(value: str) -> float:
    seconds = float(value)
    if not 0 <= seconds <= 3600:
        raise ValueError("seconds between 0 and 3600")
    return seconds
