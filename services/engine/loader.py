"""The engine's models on demand: loaded for the first connection, let go after a quiet while.

Standing by for the cloud, the engine holds ~270 MB of models that a box on the cloud never uses
(bench/footprint.py). So the process starts light, listening; the first connection (the session
falling back, or a box on ``backend = "local"``) loads them (~1-2 s, off the event loop), and
``[engine] unload_after_s`` after the last connection closed the process starts afresh (same pid,
``daemon/service.run_service``): freed heap and loaded libraries do not go back to the system from a
live Python process (measured: 359 MB serving, 292 MB after dropping the models, 35 MB afresh).
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
        """The models are loaded and no connection has been open for ``unload_after_s``."""
        wait = self.cfg.unload_after_s
        if self.engine is None or not wait or self._idle_since is None or self._lock.locked():
            return False
        return time.monotonic() - self._idle_since >= wait

    def close(self) -> None:
        if self.engine is not None:
            self.engine.close()

