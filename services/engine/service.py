"""``tolk service engine``: the local engine as a box process (optional; ``tolk-engine.service``).

READY once the socket listens; the models load on the first connection and are let go after
``[engine] unload_after_s`` without one (``loader.py``), so an engine standing by for the cloud
costs a light process. The watchdog is petted while the event loop turns and, with the models
loaded, while their thread is not stuck: a response that takes far longer than any utterance could
is a hang.
"""

from __future__ import annotations

import asyncio
import time

from daemon import backend
from daemon import config as config_mod
from daemon.service import Service, ServiceContext
from services.engine.loader import ModelLoader
from services.engine.server import EngineServer

#: The longest one utterance's models may run before the engine counts as hung.
HUNG_AFTER_S = 120.0


class EngineService(Service):
    name = "engine"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.loader = ModelLoader(ctx.config.engine, config_mod.state_dir())
        self.server: EngineServer | None = None
        self.counters.update(connections=0, responses=0, client_errors=0, model_loads=0)

    async def start(self) -> None:
        if not backend.engine_needed(self.config):
            # Under tolk.target on every box: with the cloud in use it idles, models unloaded.
            self.log.info("the backend is the cloud: the engine idles until [service] backend resolves to local")
            return
        if backend.standby(self.config):
            self.log.info("standing by for the cloud: the session falls back here when it is unreachable")
        await self._listen()

    async def _listen(self) -> None:
        host, _, port = self.config.engine.listen.rpartition(":")
        self.server = EngineServer(self.loader, host.strip("[]"), int(port))
        await self.server.start()

    async def run(self) -> None:
        while True:
            if self.server is None:
                self.mark_fresh()  # idle on purpose
                await asyncio.sleep(1.0)
                continue
            if (engine := self.loader.engine) is not None:
                # A trivial job through the model thread: it comes back unless a job there is stuck.
                probe = asyncio.ensure_future(engine.run("probe", 0.0, lambda: None))
                started = time.monotonic()
                while not probe.done():
                    if time.monotonic() - started < HUNG_AFTER_S:
                        self.mark_fresh()  # busy with an utterance, not hung
                    await asyncio.wait({probe}, timeout=1.0)
            self.mark_fresh()
            live = list(self.server.live.values())
            self.loader.busy(len(live))
            if self.loader.idle_long():
                self.log.info("models let go after %.0f s without a connection: starting afresh",
                              self.config.engine.unload_after_s)  # fmt: skip
                self.start_afresh = True
                return
            self.counters["connections"] = self.server.connections
            self.counters["responses"] = sum(c.responses for c in live)
            self.counters["client_errors"] = sum(c.errors_sent for c in live)
            self.counters["model_loads"] = self.loader.loads
            if self.loader.last_load_s is not None:
                self.counters["model_load_s"] = round(self.loader.last_load_s, 2)
            await asyncio.sleep(1.0)

    async def apply_config(self, new: config_mod.Config, changed: set[str]) -> None:
        old, self.config = self.config, new
        self.loader.cfg = new.engine
        if self.loader.engine is not None:
            # What is read per utterance ([engine] uncertain_speech) applies from the next one.
            self.loader.engine.cfg = new.engine
        if (engine := self.loader.engine) is not None and new.engine.marian_dir != old.engine.marian_dir:
            # The next connection offers the new folder's pairs; live ones keep theirs.
            engine.translator.use_marian_dir(new.engine.marian_dir)
            self.log.info("Marian pairs now from %s", new.engine.marian_dir)
        if self.server is None and backend.engine_needed(new):
            await self._listen()

    def status(self) -> str:
        if self.server is None:
            return "idle: the backend is the cloud" if self.state != "starting" else "starting"
        models = "models loaded" if self.loader.engine is not None else "models load on the first connection"
        return f"serving {self.server.url} ({len(self.server.live)} connections; {models})"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        self.loader.close()
