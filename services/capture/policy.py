"""What reaches the session: every period (``always``) or speech only (``speech``, the default).

The service bills every second it is sent, silence included. In ``speech`` mode a period goes
when the VAD hears speech, with a pre-roll before it, trailing silence after it, and in long
silences a ``muted`` keep-alive append; periods not sent are not published (docs/audio.md).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Period:
    pcm: bytes
    t: int  # end of the period, time.monotonic_ns()
    muted: bool = False


@dataclass(frozen=True)
class PolicySettings:
    mode: str = "speech"
    period_ms: int = 20
    preroll_ms: int = 500
    trailing_ms: int = 1200
    keepalive_s: float = 20.0
    keepalive_ms: int = 100


class StreamingPolicy:
    """Used by the capture thread only; ``settings`` may be replaced from elsewhere (one assignment)."""

    def __init__(self, settings: PolicySettings) -> None:
        self.settings = settings
        self._ring: deque[Period] = deque()
        self._trailing_left = 0
        self._last_sent_ns: int | None = None
        self.keepalives = 0

    def admit(self, period: Period, speaking: bool) -> list[Period]:
        """The periods to publish now (in order) for this one."""
        s = self.settings
        if s.mode == "always":
            self._ring.clear()
            return [period]
        if speaking:
            out = [*self._ring, period]
            self._ring.clear()
            self._trailing_left = -(-s.trailing_ms // s.period_ms)
            self._last_sent_ns = period.t
            return out
        if self._trailing_left > 0:
            self._trailing_left -= 1
            self._last_sent_ns = period.t
            return [period]
        self._ring.append(period)
        keep = -(-s.preroll_ms // s.period_ms)
        while len(self._ring) > keep:
            self._ring.popleft()
        return self._keepalive(period)

    def _keepalive(self, period: Period) -> list[Period]:
        s = self.settings
        if self._last_sent_ns is None:
            self._last_sent_ns = period.t  # the first keep-alive is due one interval after start
        if s.keepalive_s <= 0 or period.t - self._last_sent_ns < s.keepalive_s * 1e9:
            return []
        self._last_sent_ns = period.t
        self.keepalives += 1
        count = max(1, -(-s.keepalive_ms // s.period_ms))
        period_ns = s.period_ms * 1_000_000
        zeros = bytes(len(period.pcm))
        return [Period(zeros, period.t - (count - 1 - k) * period_ns, muted=True) for k in range(count)]
