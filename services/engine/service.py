"""``tolk service engine``: the local engine as a box process (optional; ``tolk-engine.service``).

READY only once the models are loaded (and verified) and the socket listens, so the session's
first connection is answered. The watchdog is petted while the event loop turns and the model
thread is not stuck: a response that takes far longer than any utterance could is a hang.
"""

from __future__ import annotations

import asyncio
import time

from daemon import backend
from daemon import config as config_mod
from daemon.service import Service, ServiceContext
from services.engine.core import Engine
from services.engine.server import EngineServer

#: The longest one utterance's models may run before the engine counts as hung.
HUNG_AFTER_S = 120.0


class EngineService(Service):
    name = "engine"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.engine: Engine | None = None
        self.server: EngineServer | None = None
        self.counters.update(connections=0, responses=0, client_errors=0)

    async def start(self) -> None:
        if not backend.engine_needed(self.config):
            # Under tolk.target on every box: with the cloud in use it idles, models unloaded.
            self.log.info("the backend is the cloud: the engine idles until [service] backend resolves to local")
            return
        if backend.standby(self.config):
            self.log.info("standing by for the cloud: the session falls back here when it is unreachable")
        await self._load()

    async def _load(self) -> None:
        cfg = self.config.engine
        # Loading takes seconds of CPU: off the loop, so the process still answers signals.
        self.engine = await asyncio.to_thread(Engine, cfg, config_mod.state_dir())
        host, _, port = cfg.listen.rpartition(":")
        self.server = EngineServer(self.engine, host.strip("[]"), int(port))
        await self.server.start()

    async def run(self) -> None:
        while True:
            if self.engine is None or self.server is None:
                self.mark_fresh()  # idle on purpose
                await asyncio.sleep(1.0)
                continue
            # A trivial job through the model thread: it comes back unless a job there is stuck.
            probe = asyncio.ensure_future(self.engine.run("probe", 0.0, lambda: None))
            started = time.monotonic()
            while not probe.done():
                if time.monotonic() - started < HUNG_AFTER_S:
                    self.mark_fresh()  # busy with an utterance, not hung
                await asyncio.wait({probe}, timeout=1.0)
            self.mark_fresh()
            live = list(self.server.live.values())
            self.counters["connections"] = self.server.connections
            self.counters["responses"] = sum(c.responses for c in live)
            self.counters["client_errors"] = sum(c.errors_sent for c in live)
            await asyncio.sleep(1.0)

    async def apply_config(self, new: config_mod.Config, changed: set[str]) -> None:
        old, self.config = self.config, new
        if self.engine is not None and new.engine.marian_dir != old.engine.marian_dir:
            # The next connection offers the new folder's pairs; live ones keep theirs.
            self.engine.translator.use_marian_dir(new.engine.marian_dir)
            self.log.info("Marian pairs now from %s", new.engine.marian_dir)
        if self.engine is None and backend.engine_needed(new):
            await self._load()

    def status(self) -> str:
        if self.server is None:
            return "idle: the backend is the cloud" if self.state != "starting" else "loading models"
        return f"serving {self.server.url} ({len(self.server.live)} connections)"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        if self.engine is not None:
            self.engine.close()
