"""What waits to be sent: microphone audio re-cut into appends, and the latest camera frame.

Capture publishes small periods (10-20 ms); the service wants ``chunk_ms`` per append. While
the session is not live chunks wait in a bounded backlog, oldest dropped first and counted.
A chunk sent stays *unsettled* until the service answered it whole (``settle_answered``) or it
is quiet audio nothing depends on; a lost connection puts the unsettled chunks back at the head
of the backlog (``requeue_unsettled``). ``settled_seq`` is how far capture's audio needs no
replay after a crash. Why and how: docs/session.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from dataclasses import dataclass

from daemon.messages import VideoFrame
from services.session.pause import is_loud
from services.session.protocol import BYTES_PER_SAMPLE, INPUT_RATE

BACKLOG_S = 5.0
#: The service takes at most 2 images/s; a little margin keeps network jitter from bunching three.
MIN_IMAGE_INTERVAL_S = 0.55
#: A frame that waited longer than this no longer shows what is being said.
MAX_IMAGE_AGE_S = 2.0


#: Quiet this long (in chunk time) before the speech still unanswered separates it from what was.
QUIET_GAP_MS = 400
#: Kept ahead of the unanswered speech when the rest settles: the onset the VAD needs.
LEAD_MS = 200


@dataclass(frozen=True)
class Chunk:
    pcm: bytes
    seq: int  # capture's seq of the last period that ends in it (0: unknown)
    loud: bool
    sent: bool = False  # went out on a connection that was lost before the service answered it


def chunk_bytes(chunk_ms: int) -> int:
    return chunk_ms * INPUT_RATE // 1000 * BYTES_PER_SAMPLE


class Outgoing:
    def __init__(self, chunk_ms: int, backlog_s: float = BACKLOG_S) -> None:
        self._partial = bytearray()
        self._partial_seq = 0
        self._chunks: deque[Chunk] = deque()
        self._unsettled: deque[Chunk] = deque()
        self._unsettled_loud = 0
        self.settled_seq = 0  # every capture period up to this seq needs no replay
        self._ready = asyncio.Event()
        self._image: VideoFrame | None = None
        self._image_sent_ns = 0
        self.backlog_s = backlog_s
        self.dropped = 0
        self.set_chunk_ms(chunk_ms)

    def set_chunk_ms(self, chunk_ms: int, backlog_s: float | None = None) -> None:
        if backlog_s is not None:
            self.backlog_s = backlog_s
        self.chunk_bytes = chunk_bytes(chunk_ms)
        self.chunk_ms = chunk_ms
        self.max_chunks = max(1, int(self.backlog_s * 1000 / chunk_ms))
        while len(self._chunks) > self.max_chunks:
            self._drop_oldest()
        while len(self._unsettled) > self.max_chunks:
            self._settle_oldest()

    # --- producers ---------------------------------------------------------------------------

    def add_audio(self, pcm: bytes, seq: int = 0) -> None:
        """``seq``: capture's sequence number of this period (0: unknown)."""
        self._partial += pcm
        while len(self._partial) >= self.chunk_bytes:
            # A chunk's seq is the last period that ends in it: this one, unless it runs on.
            ends_here = len(self._partial) == self.chunk_bytes
            self._push(bytes(self._partial[: self.chunk_bytes]), seq if ends_here else max(0, seq - 1))
            del self._partial[: self.chunk_bytes]
        self._partial_seq = seq

    def flush_partial(self) -> None:
        """The tail shorter than a chunk (on shutdown: the end of what was said)."""
        usable = len(self._partial) - len(self._partial) % BYTES_PER_SAMPLE
        if usable:
            self._push(bytes(self._partial[:usable]), self._partial_seq)
        self._partial.clear()

    def add_image(self, frame: VideoFrame) -> None:
        self._image = frame  # only the newest frame is worth sending
        self._ready.set()

    def _push(self, pcm: bytes, seq: int) -> None:
        if len(self._chunks) >= self.max_chunks:
            self._drop_oldest()
        self._chunks.append(Chunk(pcm, seq, is_loud(pcm)))
        self._ready.set()

    def _drop_oldest(self) -> None:
        chunk = self._chunks.popleft()
        if not chunk.sent:
            self.dropped += 1  # the service never got it at all
        self.settled_seq = max(self.settled_seq, chunk.seq)  # given up: a replay would only be staler

    # --- the sender ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Let the sender run now (something other than audio is due)."""
        self._ready.set()

    async def wait(self) -> None:
        await self._ready.wait()
        self._ready.clear()

    def peek_audio(self) -> bytes | None:
        return self._chunks[0].pcm if self._chunks else None

    def pop_audio(self) -> Chunk:
        """The head chunk went out: it waits, unsettled, for the service to answer it."""
        chunk = self._chunks.popleft()
        self._unsettled.append(chunk)
        self._unsettled_loud += chunk.loud
        if not self._unsettled_loud:
            # Nothing but quiet: nothing to hear again, but the lead into speech that may follow.
            self._settle(len(self._unsettled) - -(-LEAD_MS // self.chunk_ms))
        while len(self._unsettled) > self.max_chunks:
            self._settle_oldest()
        return chunk

    # --- settling ------------------------------------------------------------------------------

    def insert_before(self, periods: list[tuple[bytes, int]]) -> None:
        """Older audio (capture's replay: pcm, seq) ahead of everything waiting, re-cut into chunks."""
        pcm = b"".join(p for p, _seq in periods)
        ends, total = [], 0
        for p, seq in periods:
            total += len(p)
            ends.append((total, seq))
        chunks = []
        for start in range(0, len(pcm), self.chunk_bytes):
            piece = pcm[start : start + self.chunk_bytes]
            stop = start + len(piece)
            seq = max((s for end, s in ends if end <= stop), default=0)
            chunks.append(Chunk(piece, seq, is_loud(piece)))
        for chunk in reversed(chunks):
            self._chunks.appendleft(chunk)
        while len(self._chunks) > self.max_chunks:
            self._drop_oldest()
        self._ready.set()

    def settle_answered(self) -> None:
        """A response is done: what was sent before the speech still unanswered is settled.

        The speech still unanswered is the last loud stretch with no quiet gap of ``QUIET_GAP_MS``
        after it (the next utterance, begun while the answer came); it stays, with a short lead.
        """
        chunks = list(self._unsettled)
        keep = len(chunks)
        quiet = 0
        gap = max(1, -(-QUIET_GAP_MS // self.chunk_ms))
        for i in range(len(chunks) - 1, -1, -1):
            if chunks[i].loud:
                keep, quiet = i, 0
            else:
                quiet += 1
                if quiet >= gap:
                    break
        if keep < len(chunks):
            keep = max(0, keep - -(-LEAD_MS // self.chunk_ms))
        self._settle(keep)

    def settle_all(self) -> None:
        """Everything sent is settled (the session finished cleanly: the service has it all)."""
        self._settle(len(self._unsettled))

    def requeue_unsettled(self) -> int:
        """The connection is gone: what it had not settled goes first on the next one. How many chunks."""
        count = len(self._unsettled)
        while self._unsettled:
            self._chunks.appendleft(dataclasses.replace(self._unsettled.pop(), sent=True))
        self._unsettled_loud = 0
        while len(self._chunks) > self.max_chunks:
            self._drop_oldest()
        if self._chunks:
            self._ready.set()
        return count

    def _settle(self, count: int) -> None:
        for _ in range(min(count, len(self._unsettled))):
            self._settle_oldest()

    def _settle_oldest(self) -> None:
        chunk = self._unsettled.popleft()
        self._unsettled_loud -= chunk.loud
        self.settled_seq = max(self.settled_seq, chunk.seq)

    def take_image(self) -> VideoFrame | None:
        """The pending frame if one may go now (rate limit, freshness), else None."""
        frame = self._image
        if frame is None:
            return None
        now = time.monotonic_ns()
        if now - frame.t > MAX_IMAGE_AGE_S * 1e9:
            self._image = None
            return None
        if now - self._image_sent_ns < MIN_IMAGE_INTERVAL_S * 1e9:
            return None
        self._image = None
        self._image_sent_ns = now
        return frame
