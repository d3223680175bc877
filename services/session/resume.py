"""Capture's audio into the backlog once each and in order, with what a crashed session left.

A session that starts asks capture for the audio no session settled (``AudioResume``, repeated
until capture answers, since a SUB socket that just connected misses the first messages).
Live periods go into the backlog as always, but the sender holds it until the answer comes (or
``RESUME_WAIT_S`` passes: no capture, or one that keeps no ring); the replayed periods older
than the first live one then go in ahead of it. A ``seq`` that falls back is a restarted
capture process: its numbering starts again.
"""

from __future__ import annotations

from daemon.messages import AudioIn, AudioReplay
from services.session.outgoing import Outgoing

#: How long a starting session waits for capture's replay before it takes live audio alone
#: (capture answers a restarted session within a few hundred ms; measured 0.3 s). Live audio
#: waits in the backlog meanwhile, so a longer wait would hold every start back.
RESUME_WAIT_S = 1.0
#: How often the request is repeated meanwhile.
RESUME_REPEAT_S = 0.2


class AudioIntake:
    def __init__(self, outgoing: Outgoing) -> None:
        self.outgoing = outgoing
        self.high = 0  # the highest capture seq taken into the backlog
        self.resuming = True  # the sender holds the backlog until the replay is in
        self.replayed = 0
        self._replay: list[tuple[bytes, int]] = []
        self._replay_id = -1  # the replay being received (capture numbers them from 1)
        self._first_live = 0  # the seq of the first live period taken while resuming

    def live(self, msg: AudioIn) -> None:
        if msg.seq and msg.seq <= self.high and not self.resuming:
            self.high = 0  # capture restarted: its seq starts again
        if self.resuming and not self._first_live:
            self._first_live = msg.seq
        self._take(msg.pcm, msg.seq)

    def replay(self, msg: AudioReplay) -> bool:
        """A part of capture's replay; True when a whole replay is in (the sender may go)."""
        if not self.resuming:
            return False  # late (after the wait ran out), or meant for another session
        if msg.first:
            self._replay.clear()  # a replay begins (another, already half heard, is given up)
            self._replay_id = msg.replay
        elif msg.replay != self._replay_id:
            return False  # the rest of a replay whose start this session missed: wait for the next
        size = len(msg.pcm) // msg.periods if msg.periods > 0 else 0
        for n in range(msg.periods if size else 0):
            seq = msg.of_seq + n
            if not self._first_live or seq < self._first_live:
                self._replay.append((msg.pcm[n * size : (n + 1) * size], seq))
        if msg.last:
            self.done()
        return msg.last

    def done(self) -> None:
        """The replay is in (or is not coming): it goes ahead of the live audio taken meanwhile."""
        self.resuming = False
        if self._replay:
            self.outgoing.insert_before(self._replay)
            self.replayed = len(self._replay)
            self.high = max(self.high, self._replay[-1][1])
        self._replay.clear()
        self.outgoing.wake()

    def _take(self, pcm: bytes, seq: int) -> None:
        self.outgoing.add_audio(pcm, seq)
        self.high = max(self.high, seq)
