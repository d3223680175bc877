"""The one lifecycle every tolk process shares: start -> ready -> run -> stop.

- ``start()`` opens the device or socket; only when it returns is ``READY=1`` sent.
- ``run()`` is the work. It calls ``mark_fresh()`` whenever work really flowed; the
  heartbeat sends ``WATCHDOG=1`` only while that is recent, so a hung loop stops the pings.
- ``stop()`` releases everything, bounded in time.

Every background task is started with ``spawn()``: named, owned, logged when it fails (a
failure stops the service with a non-zero exit, for systemd to restart) and cancelled on stop.
SIGTERM/SIGINT stop cleanly; SIGHUP and a ``ConfigChanged`` on the bus re-read the config and
hand what changed to ``apply_config()``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, ClassVar

from daemon import config as config_mod
from daemon import config_model, logs
from daemon.bus import Bus
from daemon.messages import KEY_SECTION, Command, CommandAck, ConfigChanged, Heartbeat, Message, ProcessState
from daemon.notify import Notifier

#: Every process says how it is this often (control's DOWN_AFTER_S is two and a half of these).
HEARTBEAT_S = 2.0
STOP_TIMEOUT_S = 8.0


@dataclass
class ServiceContext:
    config: config_mod.Config
    config_path: str | None
    bus: Bus
    notifier: Notifier


class Service(ABC):
    name: ClassVar[str]
    #: How recent the last mark_fresh() must be for the watchdog to be petted.
    fresh_within_s: ClassVar[float] = 5.0

    def __init__(self, ctx: ServiceContext) -> None:
        self.ctx = ctx
        self.config = ctx.config
        self.bus = ctx.bus
        self.log = logging.getLogger(f"tolk.{self.name}")
        self.state: ProcessState = "starting"
        self.counters: dict[str, float] = {}
        self._fresh_ns = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._failure: asyncio.Future[BaseException] | None = None
        self._beat: Callable[[], None] | None = None  # set by the runner once started

    # --- to override -------------------------------------------------------------------------

    async def start(self) -> None:  # noqa: B027 - optional hook
        """Open what the service needs. Raise to refuse to start."""

    @abstractmethod
    async def run(self) -> None:
        """The work, until cancelled."""

    async def stop(self) -> None:  # noqa: B027 - optional hook
        """Release everything. Called once, after run() was cancelled."""

    async def apply_config(self, new: config_mod.Config, changed: set[str]) -> None:
        """Apply a changed config; the default takes it without reacting."""
        self.config = new

    def status(self) -> str:
        """One human line, shown by ``systemctl status`` and /api/status."""
        return self.state

    def heartbeat_parts(self) -> list[Message]:
        """Typed state sent with each heartbeat, beside its counters (capture: ``EchoState``)."""
        return []

    # --- helpers -----------------------------------------------------------------------------

    def mark_fresh(self) -> None:
        """Called by the work loop (any thread) when work really flowed."""
        self._fresh_ns = time.monotonic_ns()

    def is_fresh(self) -> bool:
        return (time.monotonic_ns() - self._fresh_ns) < self.fresh_within_s * 1e9

    def beat_now(self) -> None:
        """Send the next heartbeat at once: a change worth seeing now, not at the next tick
        (capture: a mute's edges). On the event loop; threads use call_soon_threadsafe."""
        if self._beat is not None:
            self._beat()

    def count(self, name: str, by: float = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + by

    def acknowledge(self, command: Command, detail: str, ok: bool = True) -> None:
        """Tell whoever sent ``command`` that it was carried out (or why not)."""
        if command.id:
            self.bus.publish(CommandAck(id=command.id, name=command.name, ok=ok, detail=detail))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start an owned background task; if it fails, the service stops and exits non-zero."""
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def fail(self, exc: BaseException) -> None:
        """Stop the service with an error (safe from the event loop; threads use call_soon_threadsafe)."""
        if self._failure is not None and not self._failure.done():
            self._failure.set_result(exc)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self.log.error("task %s failed: %r", task.get_name(), exc, exc_info=exc)
            self.fail(exc)

    async def _cancel_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)


class _Runner:
    def __init__(self, cls: type[Service], config_path: str | None) -> None:
        self.cls = cls
        self.config_path = config_path

    async def main(self) -> int:
        log = logging.getLogger(f"tolk.{self.cls.name}")
        try:
            cfg = config_mod.load(self.config_path)
        except config_mod.ConfigError as exc:
            logs.setup(self.cls.name)
            log.error("invalid config: %s", exc)
            return 2
        logs.setup(self.cls.name, cfg.log.level)
        logs.redact(config_mod.api_key(cfg)[0])
        notifier = Notifier()
        try:
            bus = Bus(self.cls.name)
        except Exception as exc:
            log.error("cannot open the bus: %s", exc)
            return 1
        svc = self.cls(ServiceContext(cfg, self.config_path, bus, notifier))
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        svc._failure = loop.create_future()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: svc.spawn(self._reload(svc, []), "reload"))
        try:
            return await self._lifecycle(svc, stop, log)
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            bus.close()

    async def _lifecycle(self, svc: Service, stop: asyncio.Event, log: logging.Logger) -> int:
        assert svc._failure is not None
        try:
            await svc.start()
        except Exception as exc:
            log.error("cannot start: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
            svc.state = "failed"
            self._heartbeat_once(svc, status=f"failed to start: {exc}")
            await svc.stop()
            return 1
        svc.state = "ready"
        svc.ctx.notifier.ready(svc.status())
        log.info("ready: %s", svc.status())
        svc._beat = lambda: self._heartbeat_once(svc)
        svc.spawn(self._heartbeats(svc), "heartbeat")
        svc.spawn(self._config_listener(svc), "config-listener")
        run = svc.spawn(svc.run(), "run")
        stop_wait = asyncio.create_task(stop.wait(), name=f"{svc.name}:signal")
        done, _ = await asyncio.wait({run, stop_wait, svc._failure}, return_when=asyncio.FIRST_COMPLETED)
        rc = 0
        if svc._failure in done:
            rc = 1
        elif run in done and not run.cancelled() and run.exception() is None:
            log.info("work finished")
        svc.state = "stopping"
        svc.ctx.notifier.stopping()
        self._heartbeat_once(svc)
        stop_wait.cancel()
        await svc._cancel_tasks()
        try:
            await asyncio.wait_for(svc.stop(), STOP_TIMEOUT_S)
        except Exception as exc:
            log.error("stop failed: %r", exc)
            rc = rc or 1
        svc.state = "stopped"
        self._heartbeat_once(svc)
        log.info("stopped (exit %d)", rc)
        return rc

    def _heartbeat_once(self, svc: Service, status: str | None = None) -> None:
        with contextlib.suppress(Exception):
            svc.bus.publish(
                Heartbeat(
                    service=svc.name,
                    pid=os.getpid(),
                    state=svc.state,
                    status=status or svc.status(),
                    counters=dict(svc.counters),
                )
            )
            for part in svc.heartbeat_parts():
                svc.bus.publish(part)

    async def _heartbeats(self, svc: Service) -> None:
        notifier = svc.ctx.notifier
        period = min(HEARTBEAT_S, notifier.watchdog_interval_s or HEARTBEAT_S)
        while True:
            self._heartbeat_once(svc)
            notifier.status(svc.status())
            if notifier.watchdog_usec and svc.is_fresh():
                notifier.watchdog()
            await asyncio.sleep(period)

    async def _config_listener(self, svc: Service) -> None:
        sub = svc.bus.subscribe(["control"], ConfigChanged)
        async for msg in sub:
            assert isinstance(msg, ConfigChanged)
            await self._reload(svc, msg.sections, self._validated_for_us(msg))

    def _validated_for_us(self, msg: ConfigChanged) -> config_mod.Config | None:
        """Control's validated config, where this process reads configs and the same files."""
        same_files = msg.base == config_mod.layers_named(self.config_path)
        if msg.config is None or not config_model.is_read_only() or not same_files:
            return None
        try:
            return config_mod.from_validated(msg.config)
        except (TypeError, ValueError) as exc:  # another version of the box on the bus: check it here
            logging.getLogger(f"tolk.{self.cls.name}").warning("cannot take control's config (%s): reading it", exc)
            return None

    async def _reload(self, svc: Service, hinted: list[str], validated: config_mod.Config | None = None) -> None:
        try:
            # Off the loop: a process that reads configs has a child validate them (config_model.py).
            new = validated if validated is not None else await asyncio.to_thread(config_mod.load, self.config_path)
        except config_mod.ConfigError as exc:
            svc.log.error("config reload refused, keeping the running config: %s", exc)
            return
        # The key is not part of the config: a change of it is said by name (PUT /api/key).
        changed = config_mod.changed_sections(svc.config, new) | ({KEY_SECTION} & set(hinted))
        if not changed:
            return
        svc.log.info("config changed: %s", ", ".join(sorted(changed)))
        logs.redact(config_mod.api_key(new)[0])
        await svc.apply_config(new, changed)
        svc.config = new


def run_service(cls: type[Service], config_path: str | None = None) -> int:
    """Run one service to completion; the process exit code (0 also when its work is done: the engine idle)."""
    return asyncio.run(_Runner(cls, config_path).main())
