"""What waits to be sent: microphone audio re-cut into appends, and the latest camera frame.

Capture publishes small periods (10-20 ms); the service wants ``chunk_ms`` per append. While
the session is not live (connecting, offline, backing off) chunks wait in a bounded backlog of
a few seconds, oldest dropped first and counted, so a Wi-Fi blip loses the least useful audio
and memory never grows.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque

from daemon.messages import VideoFrame
from services.session.protocol import BYTES_PER_SAMPLE, INPUT_RATE

BACKLOG_S = 5.0
#: The service takes at most 2 images/s; a little margin keeps network jitter from bunching three.
MIN_IMAGE_INTERVAL_S = 0.55
#: A frame that waited longer than this no longer shows what is being said.
MAX_IMAGE_AGE_S = 2.0


def chunk_bytes(chunk_ms: int) -> int:
    return chunk_ms * INPUT_RATE // 1000 * BYTES_PER_SAMPLE


class Outgoing:
    def __init__(self, chunk_ms: int, backlog_s: float = BACKLOG_S) -> None:
        self._partial = bytearray()
        self._chunks: deque[bytes] = deque()
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
        self.max_chunks = max(1, int(self.backlog_s * 1000 / chunk_ms))
        while len(self._chunks) > self.max_chunks:
            self._chunks.popleft()
            self.dropped += 1

    # --- producers ---------------------------------------------------------------------------

    def add_audio(self, pcm: bytes) -> None:
        self._partial += pcm
        while len(self._partial) >= self.chunk_bytes:
            self._push(bytes(self._partial[: self.chunk_bytes]))
            del self._partial[: self.chunk_bytes]

    def flush_partial(self) -> None:
        """The tail shorter than a chunk (on shutdown: the end of what was said)."""
        usable = len(self._partial) - len(self._partial) % BYTES_PER_SAMPLE
        if usable:
            self._push(bytes(self._partial[:usable]))
        self._partial.clear()

    def add_image(self, frame: VideoFrame) -> None:
        self._image = frame  # only the newest frame is worth sending
        self._ready.set()

    def _push(self, chunk: bytes) -> None:
        if len(self._chunks) >= self.max_chunks:
            self._chunks.popleft()
            self.dropped += 1
        self._chunks.append(chunk)
        self._ready.set()

    # --- the sender ----------------------------------------------------------------------------

    def wake(self) -> None:
        """Let the sender run now (something other than audio is due)."""
        self._ready.set()

    async def wait(self) -> None:
        await self._ready.wait()
        self._ready.clear()

    def peek_audio(self) -> bytes | None:
        return self._chunks[0] if self._chunks else None

    def pop_audio(self) -> None:
        self._chunks.popleft()

    def __len__(self) -> int:
        return len(self._chunks)

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

    def has_image(self) -> bool:
        return self._image is not None
