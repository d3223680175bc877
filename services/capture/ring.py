"""What capture published lately, kept so that a session that crashed loses none of it.

The session keeps unsent and unanswered audio in its own memory; a ``kill -9`` would take it
along. So capture keeps the last ``[service] backlog_s`` of the ``AudioIn`` it published, by
``seq``, and learns from the session how far that audio is settled (``AudioSettled``: answered
by the service, quiet, or given up). A session that starts asks (``AudioResume``) and gets every
kept period past that mark again as ``AudioReplay``, in order, on the bulk socket just before
the next live period, so it can put the replay ahead of live audio and drop what it has twice
by ``seq``. See docs/session.md.

The ring is filled and replayed on the capture thread (it owns the bulk publisher); the event
loop only sets the settled mark and raises the request (single assignments).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from daemon.bus import Publisher
from daemon.messages import AudioIn, AudioReplay

#: Periods joined into one replay message (50 x 20 ms: a second of audio).
BATCH_PERIODS = 50


@dataclass(frozen=True)
class _Kept:
    seq: int
    t: int
    pcm: bytes
    rate: int
    muted: bool


class AudioRing:
    def __init__(self, seconds: float, period_ms: int) -> None:
        self._kept: deque[_Kept] = deque(maxlen=max(1, int(seconds * 1000 / period_ms)))
        self.settled = 0
        self.latest = 0
        self.replays = 0
        self.replayed = 0
        self._resume = False

    def resize(self, seconds: float, period_ms: int) -> None:
        size = max(1, int(seconds * 1000 / period_ms))
        if size != self._kept.maxlen:
            self._kept = deque(self._kept, maxlen=size)

    # --- the event loop ------------------------------------------------------------------------

    def settled_through(self, seq: int) -> None:
        # A mark past anything published here speaks of an earlier capture process: not ours.
        # Monotonic: a session that just started knows less than the one before it did.
        if seq <= self.latest:
            self.settled = max(self.settled, seq)

    def request_resume(self) -> None:
        self._resume = True

    # --- the capture thread --------------------------------------------------------------------

    def keep(self, msg: AudioIn) -> None:
        """``msg`` was just published (its ``seq`` is set)."""
        self._kept.append(_Kept(msg.seq, msg.t, msg.pcm, msg.rate, msg.muted))
        self.latest = msg.seq

    def replay_due(self, publisher: Publisher) -> None:
        """If a session asked, publish what it has not settled; called before each period's audio."""
        if not self._resume:
            return
        self._resume = False
        self.replays += 1
        due = [k for k in self._kept if k.seq > self.settled]
        batches = _batches(due)
        for n, batch in enumerate(batches):
            publisher.publish(
                AudioReplay(
                    pcm=b"".join(k.pcm for k in batch),
                    t=batch[0].t,
                    rate=batch[0].rate,
                    of_seq=batch[0].seq,
                    periods=len(batch),
                    replay=self.replays,
                    first=n == 0,
                    last=n == len(batches) - 1,
                )
            )
        if not due:
            publisher.publish(AudioReplay(of_seq=self.latest, replay=self.replays, first=True, last=True))
        self.replayed += len(due)


def _batches(kept: list[_Kept]) -> list[list[_Kept]]:
    """Runs of consecutive periods of one length and rate, at most ``BATCH_PERIODS`` each."""
    batches: list[list[_Kept]] = []
    for k in kept:
        run = batches[-1] if batches else None
        if (
            run is None
            or len(run) >= BATCH_PERIODS
            or k.seq != run[-1].seq + 1
            or len(k.pcm) != len(run[0].pcm)
            or k.rate != run[0].rate
        ):
            batches.append([k])
        else:
            run.append(k)
    return batches
