"""The engine's models on demand: loaded for the first connection, let go after a quiet while.

The models are ~270 MB that a box on the cloud never uses (bench/footprint.py). The engine process
starts on its first connection (socket activation: ``tolk-engine.socket``, or ``tolk run`` holding
the socket), and that connection loads them (~1-2 s, off the event loop). ``[engine]
unload_after_s`` after the last connection closed, ``idle_long()`` says so and the process exits:
freed heap and loaded libraries do not go back to the system from a live Python process (measured:
359 MB serving, 292 MB after dropping the models), and the socket starts it again when it is needed.
Only this module imports the models' libraries.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING

from daemon.config import EngineConfig

if TYPE_CHECKING:
    from services.engine.core import Engine



class ModelLoader:
    def __init__(self, cfg: EngineConfig, state_dir: Path, engine: Engine | None = None) -> None:
        """``engine``: models loaded already (a test's or a benchmark's, shared by many servers)."""
        self.cfg = cfg
        self.state_dir = state_dir
        self.engine = engine
        self.loads = 0
        self.last_load_s: float | None = None
        self._lock = asyncio.Lock()
        self._idle_since: float | None = time.monotonic()

    async def get(self) -> Engine:
        """The loaded engine, loading it first if needed (one load however many ask at once)."""
        async with self._lock:
            if self.engine is None:
                from services.engine.core import Engine

                # Loading takes seconds of CPU: off the loop, so audio and signals are still read.
                self.engine = await asyncio.to_thread(Engine, self.cfg, self.state_dir)
                self.loads += 1
                self.last_load_s = self.engine.load_s
            return self.engine

    def busy(self, live: int) -> None:
        """Told each heartbeat how many connections are open; the quiet clock starts at zero."""
        if live:
            self._idle_since = None
        elif self._idle_since is None:
            self._idle_since = time.monotonic()

    def idle_long(self) -> bool:
        """No connection has been open for ``unload_after_s`` (0: never), and no load is under way."""
        wait = self.cfg.unload_after_s
        if not wait or self._idle_since is None or self._lock.locked():
            return False
        return time.monotonic() - self._idle_since >= wait

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

