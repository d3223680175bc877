"""Faults the simulator injects on purpose, and their one-line spelling.

Spec: comma-separated ``name`` or ``name=value`` items, e.g.
``refuse=401x2,delay=1.5,close_after_audio=3,bursty``:

- ``refuse=STATUS`` / ``refuse=STATUSxN``: answer the handshake with HTTP STATUS (401, 429, ...),
  every time or the first N times, then accept.
- ``delay=S``: wait S seconds after an utterance ends before its response starts.
- ``close_after_audio=S`` / ``close_after_audio=SxN``: close the connection (code 1011) once S seconds
  of audio arrived on it; every connection, or only the first N.
- ``close_mid_response``: close the connection (code 1011) right after a response's first audio.
- ``reject_update=MESSAGE``: answer every ``session.update`` with an ``error`` carrying MESSAGE
  (``reject_code=CODE`` sets its code, default ``invalid_value``) and no ``session.updated``.
- ``stall``: accept the connection, read everything, never send anything.
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
    reject_update: str | None = None
    reject_code: str = "invalid_value"
    stall: bool = False
    malformed: bool = False
    bursty: bool = False

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
        if name in flags:
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
        elif name == "close_after_audio":
            seconds, _, times = value.partition("x")
            self.close_after_audio_s = _seconds(seconds)
            self.close_after_audio_times = int(times) if times else None
        elif name == "reject_update":
            self.reject_update = value or "session.update refused (simulated)"
        elif name == "reject_code":
            self.reject_code = value
        else:
            known = ["refuse", "delay", "close_after_audio", "reject_update", "reject_code", *sorted(flags)]
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
