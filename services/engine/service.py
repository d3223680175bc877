"""``tolk service engine``: the local engine as a box process (optional; ``tolk-engine.socket``).

It runs only while it is used: systemd (``tolk-engine.socket``) or ``tolk run`` listen on ``[engine]
listen`` and start it on the first connection, handing it the socket; ``[engine]
unload_after_s`` after its last connection closed it exits, and the next connection starts it
again (``loader.py``). READY once it serves on the socket. Started by hand (no socket handed
over) it binds ``[engine] listen`` itself and stays. The watchdog is petted while the event loop
turns and, with the models loaded, while their thread is not stuck: a response that takes far
longer than any utterance could is a hang.
"""

from __future__ import annotations

import asyncio
import socket
import time

from daemon import config as config_mod
from daemon.notify import listen_sockets
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
        #: Started on a connection, with the socket handed over: it exits when idle (see above).
        self.activated = False
        self.counters.update(connections=0, responses=0, client_errors=0, model_loads=0)

    async def start(self) -> None:
        host, _, port = self.config.engine.listen.rpartition(":")
        self.server = EngineServer(self.loader, host.strip("[]"), int(port))
        handed = listen_sockets()
        self.activated = bool(handed)
        await self.server.start(handed[0] if handed else None)
        if handed and not _same_address(handed[0], self.config.engine.listen):
            # The session connects to [engine] listen: a socket elsewhere is never reached.
            self.log.error("started on %s, but [engine] listen is %s: the session looks for it there",
                           self.server.url, self.config.engine.listen)  # fmt: skip

    async def run(self) -> None:
        assert self.server is not None
        while True:
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
            if self.activated and self.loader.idle_long():
                self.log.info("no connection for %.0f s: exiting (the next connection starts the engine again)",
                              self.config.engine.unload_after_s)  # fmt: skip
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

    def status(self) -> str:
        if self.server is None:
            return self.state
        models = "models loaded" if self.loader.engine is not None else "models load on the first connection"
        return f"serving {self.server.url} ({len(self.server.live)} connections; {models})"

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
        self.loader.close()


def _same_address(sock: socket.socket, listen: str) -> bool:
    host, _, port = listen.rpartition(":")
    bound = sock.getsockname()
    names = {"localhost": {"127.0.0.1", "::1"}}.get(host.strip("[]"), {host.strip("[]")})
    return str(bound[1]) == port and bound[0] in names
