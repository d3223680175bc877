"""Where the conversation stands, from what the session sent and what the service answered.

Two decisions hang on it. Rotation: a fresh session is opened only at a pause, so no utterance
is cut. Stall: speech went out and the service said nothing at all for ``stall_timeout_s``,
so the connection is dead in all but name. Loudness is a plain RMS threshold on the 16 kHz
chunks sent: zero-filled (muted) and silent audio never count as speech.
"""

from __future__ import annotations

import asyncio
import math
import sys
from array import array
from operator import mul

#: RMS of 16-bit samples above which a chunk counts as speech (about -40 dBFS).
SPEECH_RMS = 330.0
#: Quiet this long after speech, with every response finished, is a pause.
PAUSE_S = 0.8
#: Quiet this long is a pause even if the last sound was never answered (a cough, a door).
LONG_PAUSE_S = 4.0


def rms(pcm: bytes, step: int = 1) -> float:
    """RMS of 16-bit little-endian samples (of every ``step``-th). Plain Python: the session imports
    no numpy (its ~6 MB per process, bench/footprint.py) for ten 100 ms chunks a second."""
    samples = array("h", pcm[: len(pcm) - len(pcm) % 2])[::step]
    if sys.byteorder == "big":
        samples.byteswap()
    return math.sqrt(sum(map(mul, samples, samples)) / len(samples)) if samples else 0.0


def is_loud(pcm: bytes) -> bool:
    # Every fourth sample: the mean square of speech or silence shows as well at 4 kHz, for a quarter.
    return rms(pcm, 4) > SPEECH_RMS


class Activity:
    def __init__(self) -> None:
        self.changed = asyncio.Event()  # anything that may turn into a pause
        self.waiting = asyncio.Event()  # speech went out and awaits any answer
        self.reset()

    def reset(self) -> None:
        """A new connection: nothing sent, nothing open."""
        self.open_responses: set[str] = set()
        self.last_loud = 0.0  # monotonic time of the last loud chunk sent, 0: none
        self.last_answer = 0.0  # the last response.done
        self.unanswered_since: float | None = None  # first loud chunk sent after the last event
        self.waiting.clear()
        self.changed.set()

    # --- what happened ---------------------------------------------------------------------------

    def sent(self, loud: bool, now: float) -> None:
        """A chunk went to the service (``loud``: as ``is_loud`` found it when it was queued)."""
        if loud:
            self.last_loud = now
            if self.unanswered_since is None:
                self.unanswered_since = now
                self.waiting.set()
        self.changed.set()

    def event(self) -> None:
        """Any event from the service: it is alive."""
        self.unanswered_since = None
        self.waiting.clear()

    def response_started(self, response_id: str) -> None:
        if len(self.open_responses) < 64:
            self.open_responses.add(response_id)
        self.changed.set()

    def response_ended(self, response_id: str, now: float) -> None:
        self.open_responses.discard(response_id)
        self.last_answer = now
        self.changed.set()

    # --- decisions -------------------------------------------------------------------------------

    def at_pause(self, now: float) -> bool:
        if self.open_responses:
            return False
        quiet_for = now - self.last_loud if self.last_loud else float("inf")
        answered = self.last_answer >= self.last_loud
        return quiet_for >= LONG_PAUSE_S or (quiet_for >= PAUSE_S and answered)

    def stalled_for(self, now: float) -> float:
        """Seconds since speech went out with no event at all coming back (0: not waiting)."""
        return 0.0 if self.unanswered_since is None else now - self.unanswered_since
