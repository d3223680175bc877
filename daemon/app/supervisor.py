"""``tolk run``: every process of the box as a child, for a laptop or a test (systemd does this on a device).

Each child gets its own ``NOTIFY_SOCKET``, exactly as systemd would give a ``Type=notify`` unit,
so "started" means the child said ``READY=1`` after opening its device or socket. A child that
exits before that fails the start: everything is stopped and ``tolk run`` exits non-zero.
SIGINT/SIGTERM are forwarded; a child that dies later is restarted after a pause, like
``Restart=always``, unless ``restart=False``. It follows the config as the units do: a process
the config comes to need (a camera source set on the admin page) is started when control says
the config changed (``tolk-camera.path`` does this under systemd). The local engine starts on its
first connection, as ``tolk-engine.socket`` starts it under systemd: ``tolk run`` listens on
``[engine] listen`` and hands the socket over (``activate.py``); the engine exits when it has been
idle a while, and the next connection starts it again. The API key in the environment reaches only
the children whose units load it as a credential (``KEY_HOLDERS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from daemon import bus as bus_mod
from daemon import config as config_mod
from daemon import logs
from daemon.bus import ON_DEMAND, PROCESSES

log = logging.getLogger("tolk.run")

READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 12.0
RESTART_SEC = 3.0
START_LIMIT = (5, 60.0)  # at most 5 restarts of one process in 60 s, as StartLimitBurst/Interval
#: The processes whose units load the key (LoadCredential=): the session. No other child gets it.
KEY_HOLDERS = frozenset({"session"})

SECRET_ENV = ("DASHSCOPE_API_KEY",)


class StartError(RuntimeError):
    pass


@dataclass
class Child:
    name: str
    notify_path: Path
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    status: str = ""
    restarts: list[float] = field(default_factory=list)
    sock: socket.socket | None = None
    #: An on-demand child's listening socket, held here between its runs.
    listener: socket.socket | None = None


def prepare_dirs() -> tuple[Path, Path]:
    """The runtime and state dirs: the configured ones, else per-user ones for a laptop."""
    runtime = bus_mod.runtime_dir()
    state = config_mod.state_dir()
    uid = os.getuid()
    fallbacks = {
        "runtime": Path(os.environ.get("XDG_RUNTIME_DIR") or f"/tmp/tolk-{uid}") / "tolk",
        "state": Path.home() / ".local" / "state" / "tolk",
    }
    resolved = {}
    for kind, path, env in (("runtime", runtime, "TOLK_RUNTIME_DIR"), ("state", state, "TOLK_STATE_DIR")):
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not os.access(path, os.W_OK):
                raise PermissionError(path)
        except OSError:
            if os.environ.get(env):
                raise
            path = fallbacks[kind]
            path.mkdir(parents=True, exist_ok=True)
        resolved[kind] = path
    return resolved["runtime"], resolved["state"]


class Supervisor:
    def __init__(
        self,
        config_path: str | None,
        *,
        restart: bool = True,
        env: dict[str, str] | None = None,
        services: Iterable[str] | None = None,
    ) -> None:
        self.config_path = config_path
        self.restart = restart
        self.runtime, self.state = prepare_dirs()
        self.env = dict(os.environ if env is None else env)
        self.env.update(TOLK_RUNTIME_DIR=str(self.runtime), TOLK_STATE_DIR=str(self.state), PYTHONUNBUFFERED="1")
        for leaked in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
            self.env.pop(leaked, None)
        self.children = {
            name: Child(name, self.runtime / f"run-{name}.notify") for name in (services or PROCESSES)
        }
        self.stopping = False
        self.failed: str | None = None
        self._watchers: list[asyncio.Task[None]] = []
        self._stop_event = asyncio.Event()
        #: Started when the config comes to need it, at most one start at a time.
        self._adding = asyncio.Lock()

    # --- notify sockets ----------------------------------------------------------------------

    def _bind_notify(self, child: Child) -> None:
        with contextlib.suppress(FileNotFoundError):
            child.notify_path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(child.notify_path))
        sock.setblocking(False)
        child.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._on_notify, child)

    def _on_notify(self, child: Child) -> None:
        assert child.sock is not None
        try:
            data = child.sock.recv(4096).decode(errors="replace")
        except BlockingIOError:
            return
        for line in data.splitlines():
            key, _, value = line.partition("=")
            if key == "READY" and value == "1":
                child.ready.set()
            elif key == "STATUS":
                child.status = value

    # --- processes ---------------------------------------------------------------------------

    async def _spawn(self, child: Child) -> None:
        child.ready.clear()
        cmd = [sys.executable, "-m", "daemon.app.cli", "service", child.name]
        if self.config_path:
            cmd += ["--config", self.config_path]
        env = dict(self.env, NOTIFY_SOCKET=str(child.notify_path))
        if child.name not in KEY_HOLDERS:
            for name in SECRET_ENV:
                env.pop(name, None)
        fds: tuple[int, ...] = ()
        if child.listener is not None:
            fds = (child.listener.fileno(),)
            cmd = [sys.executable, "-m", "daemon.app.activate", str(fds[0]), *cmd]
        child.proc = await asyncio.create_subprocess_exec(*cmd, env=env, start_new_session=False, pass_fds=fds)
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    async def _await_ready(self, child: Child) -> None:
        assert child.proc is not None
        ready = asyncio.create_task(child.ready.wait())
        exited = asyncio.create_task(child.proc.wait())
        done, _ = await asyncio.wait({ready, exited}, timeout=READY_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if child.ready.is_set():
            log.info("%s ready: %s", child.name, child.status)
            return
        if exited in done:
            raise StartError(f"{child.name} exited with {child.proc.returncode} before it was ready")
        raise StartError(f"{child.name} not ready within {READY_TIMEOUT_S:.0f} s")

    async def start(self) -> None:
        for child in self.children.values():
            self._bind_notify(child)
        # The on-demand ones listen first (the session's first connection may go to the engine),
        # then control first: it collects everyone's heartbeats from the start.
        for child in self.children.values():
            if child.name in ON_DEMAND:
                self._listen(child)
                self._watchers.append(asyncio.create_task(self._on_demand(child), name=f"run:demand-{child.name}"))
        at_once = [c for c in self.children.values() if c.name not in ON_DEMAND]
        order = sorted(at_once, key=lambda c: c.name != "control")
        await asyncio.gather(*(self._spawn(c) for c in order))
        await asyncio.gather(*(self._await_ready(c) for c in order))
        for child in order:
            self._watchers.append(asyncio.create_task(self._watch(child), name=f"run:watch-{child.name}"))
        self._watchers.append(asyncio.create_task(self._follow_config(), name="run:follow-config"))

    def _listen(self, child: Child) -> None:
        """Listen where the on-demand child will serve (``[engine] listen``), as its socket unit does."""
        listen = config_mod.load(self.config_path).engine.listen
        host, _, port = listen.rpartition(":")
        try:
            child.listener = socket.create_server((host.strip("[]"), int(port)), backlog=16)
        except OSError as exc:
            raise StartError(f"cannot listen on {listen} for the {child.name}: {exc.strerror}") from None
        log.info("%s starts on its first connection to %s", child.name, listen)

    async def _on_demand(self, child: Child) -> None:
        """Start ``child`` when a connection waits, again after it exits; restart it as ``_watch`` does if it fails."""
        assert child.listener is not None
        loop = asyncio.get_running_loop()
        while not self.stopping:
            connection: asyncio.Future[None] = loop.create_future()
            loop.add_reader(child.listener.fileno(), _settle, connection)
            try:
                await connection
            finally:
                loop.remove_reader(child.listener.fileno())
            await self._spawn(child)
            try:
                await self._await_ready(child)
            except StartError as exc:
                log.error("%s", exc)
            assert child.proc is not None
            rc = await child.proc.wait()
            if self.stopping:
                return
            if rc == 0:
                log.info("%s exited, its work done: it starts again on the next connection", child.name)
                continue
            log.error("%s exited with %s", child.name, rc)
            if not await self._may_restart(child):
                return

    async def _follow_config(self) -> None:
        """Start what a changed config needs (the processes never needed at start are not running)."""
        import zmq.asyncio

        from daemon.backend import processes
        from daemon.bus import Subscriber
        from daemon.messages import Channel, ConfigChanged

        ctx = zmq.asyncio.Context()
        sub = Subscriber(ctx, Channel.STATE, ["control"], [ConfigChanged], self.runtime)
        try:
            async for _msg in sub:
                try:
                    cfg = config_mod.load(self.config_path)
                except config_mod.ConfigError:
                    continue  # control refuses such a write; the processes say so themselves
                for name in processes(cfg):
                    if name not in self.children and not self.stopping:
                        await self._add(name)
        finally:
            sub.close()
            ctx.term()

    async def _add(self, name: str) -> None:
        async with self._adding:
            child = self.children[name] = Child(name, self.runtime / f"run-{name}.notify")
            self._bind_notify(child)
            if name in ON_DEMAND:
                try:
                    self._listen(child)
                except (StartError, config_mod.ConfigError) as exc:
                    log.error("%s, which the config now needs: %s", name, exc)
                    return
                self._watchers.append(asyncio.create_task(self._on_demand(child), name=f"run:demand-{name}"))
                return
            await self._spawn(child)
            try:
                await self._await_ready(child)
            except StartError as exc:
                log.error("%s, which the config now needs: %s", name, exc)
            else:
                log.info("%s started: the config now needs it", name)
            self._watchers.append(asyncio.create_task(self._watch(child), name=f"run:watch-{name}"))

    async def _watch(self, child: Child) -> None:
        while not self.stopping:
            assert child.proc is not None
            rc = await child.proc.wait()
            if self.stopping:
                return
            log.error("%s exited with %s", child.name, rc)
            if not await self._may_restart(child):
                return
            await self._spawn(child)
            try:
                await self._await_ready(child)
            except StartError as exc:
                log.error("restart failed: %s", exc)

    async def _may_restart(self, child: Child) -> bool:
        """After a failure: wait ``RESTART_SEC`` and say yes, or give up (no restarts, or too many)."""
        now = time.monotonic()
        child.restarts = [t for t in child.restarts if now - t < START_LIMIT[1]]
        if not self.restart or len(child.restarts) >= START_LIMIT[0]:
            if self.restart:
                self.failed = f"{child.name} keeps failing ({len(child.restarts)} restarts in {START_LIMIT[1]:.0f} s)"
                log.error("%s", self.failed)
                self.request_stop()
            return False
        child.restarts.append(now)
        await asyncio.sleep(RESTART_SEC)
        return not self.stopping

    def request_stop(self) -> None:
        self._stop_event.set()

    async def stop(self) -> None:
        self.stopping = True
        for watcher in self._watchers:
            watcher.cancel()
        procs = [c.proc for c in self.children.values() if c.proc is not None and c.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        if procs:
            await asyncio.wait([asyncio.create_task(p.wait()) for p in procs], timeout=STOP_TIMEOUT_S)
            for proc in procs:
                if proc.returncode is None:
                    log.error("pid %d did not stop in %.0f s: killing it", proc.pid, STOP_TIMEOUT_S)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        loop = asyncio.get_running_loop()
        for child in self.children.values():
            if child.sock is not None:
                loop.remove_reader(child.sock.fileno())
                child.sock.close()
                with contextlib.suppress(FileNotFoundError):
                    child.notify_path.unlink()
            if child.listener is not None:
                child.listener.close()

    async def run(self) -> int:
        """Start everything, wait for a signal (or a fatal failure), stop everything."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop_event.set)
        try:
            try:
                await self.start()
            except StartError as exc:
                log.error("%s", exc)
                self.failed = str(exc)
                return 1
            log.info("all processes ready; runtime dir %s", self.runtime)
            await self._stop_event.wait()
            log.info("stopping")
            return 1 if self.failed else 0
        finally:
            await self.stop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def run_all(config_path: str | None, restart: bool = True) -> int:
    try:
        cfg = config_mod.load(config_path)
    except config_mod.ConfigError as exc:
        print(f"tolk: invalid config: {exc}", file=sys.stderr)
        return 2
    logs.setup("run", cfg.log.level)
    from daemon.backend import processes

    return asyncio.run(Supervisor(config_path, restart=restart, services=processes(cfg)).run())
