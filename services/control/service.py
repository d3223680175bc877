"""``tolk service control``: the HTTP API, the bus's view of every process, the config's writer."""

from __future__ import annotations

import asyncio

from daemon import backend, logs
from daemon import config as config_mod
from daemon.bus import OPTIONAL_PROCESSES, PROCESSES, Subscriber
from daemon.messages import Command, RemoteCommand, RemotePatch
from daemon.service import Service, ServiceContext
from services.control.api import create_app
from services.control.buttons import DirectionButtons
from services.control.http_server import HttpListener, ListenError
from services.control.remote import REMOTE_SOURCES, RemoteDesk
from services.control.security import AccessPolicy, TokenMissing
from services.control.setup import admin_url
from services.control.status import STATE_TOPICS, StatusAggregator
from services.control.store import ConfigStore

#: How often the listener checks itself with a real request; two missed in a row stop the watchdog's pets.
SELF_CHECK_S = 4.0


class ControlService(Service):
    name = "control"
    fresh_within_s = 2 * SELF_CHECK_S + 1.0

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.aggregator = StatusAggregator(
            backend.processes(ctx.config), captions_clear_s=ctx.config.control.captions_clear_s
        )
        self.store = ConfigStore(ctx.config, ctx.config_path, vet=_listen_needs_token)
        self.app = create_app(self.aggregator, self.store, self.bus.publish)
        self.remote = RemoteDesk(self.store, self.app.state.desk, self.bus.publish)
        self.listener: HttpListener | None = None
        self._sub: Subscriber | None = None
        self._requests: Subscriber | None = None
        self._listen_problem = ""
        self.buttons: DirectionButtons | None = None

    async def start(self) -> None:
        policy: AccessPolicy = self.app.state.access
        if problem := policy.problem():
            raise TokenMissing(problem)
        logs.redact(policy.token)
        if policy.lan and config_mod.api_key(self.config)[0] is None:
            # First boot off loopback: a way into /admin for whoever stands at the screen.
            code = self.app.state.setup.issue()
            self.log.warning(
                "no API key yet: open %s?setup=%s (one-time setup code %s, also on the screen)",
                admin_url(self.config.control.listen), code, code,
            )  # fmt: skip
        if removed := self.store.remove_stale_temporaries():
            self.log.info("removed %d unfinished config write(s) left by a crash", removed)
        # Subscribe first: the sockets connect while the listener starts, so the first
        # /api/status already has heartbeats (our own included: control is a process too).
        self._sub = self.bus.subscribe(PROCESSES + OPTIONAL_PROCESSES, *STATE_TOPICS)
        self._requests = self.bus.subscribe(REMOTE_SOURCES, RemotePatch, RemoteCommand)
        listener = HttpListener(self.app, self.config.control.listen, self.log)
        await listener.open(self.spawn)
        self.listener = listener
        self._open_buttons()

    def _open_buttons(self) -> None:
        """GPIO hold-to-talk buttons, if configured; a box without them still serves."""
        pins = self.config.languages.direction_buttons
        if not pins:
            return
        loop = asyncio.get_running_loop()

        def send(direction: str) -> None:  # from gpiozero's thread: publish on the loop's
            loop.call_soon_threadsafe(self.bus.publish, Command(name="direction", args={"direction": direction}))

        try:
            self.buttons = DirectionButtons(pins, send)
        except Exception as exc:  # no gpiozero, no GPIO chip, pin busy: say so, keep serving
            self.log.warning("direction buttons on GPIO %s not available: %s", pins, exc)
        else:
            self.log.info("direction buttons on GPIO %s", pins)

    async def run(self) -> None:
        assert self._sub is not None and self._requests is not None
        self.spawn(self.aggregator.consume(self._sub), "bus-states")
        self.spawn(self.remote.serve(self._requests), "fleet-requests")
        while True:
            listener = self.listener
            if listener is None or not listener.serving():
                raise RuntimeError(f"the HTTP listener on {self.config.control.listen} stopped")
            # Fresh only when a real request through our own socket got an answer: a hung app
            # or a stalled event loop stops the watchdog pings.
            if await listener.probe():
                self.mark_fresh()
            else:
                self.count("self_check_failures")
            self.counters["http_requests"] = listener.requests
            self.counters["config_writes"] = self.store.writes
            self.counters["fleet_requests"] = self.remote.handled
            self.counters["bus_messages"] = self.aggregator.received
            self.counters["bus_rejected"] = self._sub.rejected
            await asyncio.sleep(SELF_CHECK_S)

    async def stop(self) -> None:
        if self.buttons is not None:
            self.buttons.close()
        if self.listener is not None:
            await self.listener.close()

    async def apply_config(self, new: config_mod.Config, changed: set[str]) -> None:
        self.store.replace(new)
        self.aggregator.captions_clear_s = new.control.captions_clear_s
        self.aggregator.expect(backend.processes(new))
        policy = AccessPolicy.from_config(new)
        if policy.problem() is None:
            logs.redact(policy.token)
            self.app.state.access = policy
        else:
            # Edited by hand to a LAN address without a token: keep serving where we are.
            self.log.error("%s; keeping http://%s", policy.problem(), self.app.state.access.listen)
            return
        if self.listener is not None and new.control.listen != self.listener.listen:
            await self._move_listener(new.control.listen)
        await super().apply_config(new, changed)

    async def _move_listener(self, listen: str) -> None:
        """Open the new address before closing the old: a refused address keeps the API reachable."""
        assert self.listener is not None
        moved = HttpListener(self.app, listen, self.log)
        try:
            await moved.open(self.spawn)
        except ListenError as exc:
            self._listen_problem = str(exc)
            self.log.error("keeping http://%s: %s", self.listener.listen, exc)
            return
        old, self.listener = self.listener, moved
        self._listen_problem = ""
        # Let the response that made this change leave before the old socket closes.
        await asyncio.sleep(0.2)
        await old.close()

    def status(self) -> str:
        if self.listener is None:
            return self.state
        line = f"serving on {self.listener.listen}"
        return f"{line} ({self._listen_problem})" if self._listen_problem else line


def _listen_needs_token(cfg: config_mod.Config) -> list[str]:
    """A PATCH that would open the API to the network without a token is refused up front."""
    problem = AccessPolicy.from_config(cfg).problem()
    return [problem] if problem else []
