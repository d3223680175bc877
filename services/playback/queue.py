"""The bounded hand-over between the event loop (which receives audio) and the writer thread."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Chunk:
    """One ``AudioOut``: ``t`` is when the session received it; ``end`` marks a response's end."""

    pcm: bytes
    t: int
    response_id: str = ""
    end: bool = False


class ChunkQueue:
    """FIFO of chunks bounded in bytes; when full the oldest audio goes (a stale sentence is
    worth less than the current one). ``get`` blocks without polling."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: deque[Chunk] = deque()
        self._bytes = 0
        self._cond = threading.Condition()

    def put(self, chunk: Chunk) -> int:
        """Append; returns how many old chunks were dropped to make room."""
        dropped = 0
        with self._cond:
            self._items.append(chunk)
            self._bytes += len(chunk.pcm)
            while self._bytes > self.max_bytes and len(self._items) > 1:
                self._bytes -= len(self._items.popleft().pcm)
                dropped += 1
            self._cond.notify()
        return dropped

    def get(self, timeout: float | None, stop: threading.Event) -> Chunk | None:
        """The next chunk; None when ``timeout`` passes or ``stop`` is set (see ``wake``)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or stop.is_set(), timeout):
                return None
            if stop.is_set():
                return None
            chunk = self._items.popleft()
            self._bytes -= len(chunk.pcm)
            return chunk

    def wake(self) -> None:
        """Wake a waiting ``get`` so it sees its stop event."""
        with self._cond:
            self._cond.notify_all()

    def clear(self) -> int:
        with self._cond:
            count = len(self._items)
            self._items.clear()
            self._bytes = 0
            return count

    def __len__(self) -> int:
        return len(self._items)
