"""The HTTP listener: uvicorn serving inside the service's own event loop.

Three things differ from ``uvicorn.run``:

- uvicorn's ``Server.serve()`` replaces the SIGINT/SIGTERM handlers with its own
  (``capture_signals``, plain ``signal.signal``), which would silently disconnect the
  lifecycle's handlers and re-raise the signal when it finishes. The lifecycle owns the
  signals, so ``_EmbeddedServer`` captures none.
- The socket is bound here, before uvicorn starts, so that a port in use is a clear error
  from ``start()`` (uvicorn would ``sys.exit`` inside the event loop) and ``READY=1`` is only
  sent once the socket really listens.
- uvicorn's main loop ticks every 0.1 s; ``_EmbeddedServer`` waits for ``request_exit()`` instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import uvicorn

#: How long a stopping listener lets in-flight requests finish.
SHUTDOWN_GRACE_S = 2
STARTUP_TIMEOUT_S = 10.0
PROBE_TIMEOUT_S = 2.0

Spawn = Callable[[Coroutine[Any, Any, Any], str], "asyncio.Task[Any]"]


class ListenError(RuntimeError):
    """The HTTP listener cannot be opened; the message says why and what to change."""


def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]"), int(port)


def loopback_for(host: str) -> str:
    """Where to connect to reach a listener bound to ``host`` (wildcards mean this machine)."""
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


def bind(listen: str) -> socket.socket:
    """A listening TCP socket on HOST:PORT, or ListenError naming the address and the cause."""
    host, port = split_listen(listen)
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ListenError(f"cannot listen on {listen}: unknown host {host!r} ({exc.strerror})") from None
    family, _, _, _, address = infos[0]
    try:
        return socket.create_server(address, family=family, backlog=64)
    except OSError as exc:
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = "; another program (another tolk control?) holds it: stop that or change [control] listen"
        elif exc.errno == errno.EADDRNOTAVAIL:
            hint = "; this machine has no such address: change [control] listen"
        elif exc.errno == errno.EACCES:
            hint = "; ports below 1024 need privileges: use a higher port"
        raise ListenError(f"cannot listen on {listen}: {exc.strerror}{hint}") from None


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its signal handling and without its tick (see the module docstring)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()
        self._exit = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()

    async def main_loop(self) -> None:
        # uvicorn's own loop wakes ten times a second to look at should_exit (and to renew the Date
        # header, which is off here); an idle kiosk's control process waits for the word instead.
        await self.on_tick(0)
        await self._exit.wait()

    def request_exit(self) -> None:
        self.should_exit = True
        self._exit.set()


class HttpListener:
    """One HTTP listener for an ASGI app on HOST:PORT."""

    def __init__(self, app: Any, listen: str, log: logging.Logger) -> None:
        self.app = app
        self.listen = listen
        self.log = log
        self._sock: socket.socket | None = None
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[Any] | None = None

    async def open(self, spawn: Spawn) -> None:
        """Bind and start serving; returns once connections are being accepted."""
        self._sock = bind(self.listen)
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,  # the service's logging stays as logs.setup() made it
            access_log=False,
            server_header=False,
            date_header=False,  # see main_loop
            proxy_headers=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            timeout_keep_alive=5,
        )
        self._server = server = _EmbeddedServer(config)
        self._task = task = spawn(server.serve(sockets=self._sockets()), f"http {self.listen}")
        ready = asyncio.ensure_future(server.listening.wait())
        try:
            await asyncio.wait({ready, task}, timeout=STARTUP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
        if not server.listening.is_set():
            await self.close()
            raise ListenError(f"the HTTP server on {self.listen} did not start")
        self.log.info("listening on http://%s", self.listen)

    def _sockets(self) -> list[socket.socket] | None:
        return [self._sock] if self._sock is not None else None

    @property
    def requests(self) -> int:
        return self._server.server_state.total_requests if self._server else 0

    def serving(self) -> bool:
        """True while the socket accepts connections and uvicorn's loop runs."""
        server, task = self._server, self._task
        if server is None or task is None or task.done() or not server.started or server.should_exit:
            return False
        return all(s.is_serving() for s in server.servers)

    async def probe(self) -> bool:
        """One real request to our own /health: proves the app answers, not just that a socket exists."""
        host, port = split_listen(self.listen)
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                reader, writer = await asyncio.open_connection(loopback_for(host), port)
                try:
                    # Host: the address itself, which the access guard accepts on a loopback bind.
                    request = f"GET /health HTTP/1.1\r\nHost: {self.listen}\r\nConnection: close\r\n\r\n"
                    writer.write(request.encode("ascii", "replace"))
                    await writer.drain()
                    status_line = await reader.readline()
                finally:
                    writer.close()
                    with contextlib.suppress(OSError):
                        await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            self.log.warning("self-check of http://%s failed: %r", self.listen, exc)
            return False
        return status_line.startswith((b"HTTP/1.1 200", b"HTTP/1.1 503"))

    async def close(self) -> None:
        """Stop accepting, let in-flight requests finish (bounded), close the socket."""
        server, task = self._server, self._task
        if server is None or task is None:
            if self._sock is not None:
                self._sock.close()
            return
        server.request_exit()
        if not task.done():
            # uvicorn leaves its main loop at once and shuts itself down.
            await asyncio.wait({task}, timeout=SHUTDOWN_GRACE_S + 1.0)
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=1.0)
        if task.cancelled() and server.started:
            # Cancelled mid-serve (the lifecycle cancels tasks before stop()): uvicorn's own
            # shutdown never ran, so run it here: close the listener, end open connections.
            try:
                await asyncio.wait_for(server.shutdown(sockets=self._sockets()), SHUTDOWN_GRACE_S + 1.0)
            except TimeoutError:
                self.log.warning("HTTP connections still open after %.0f s; closing anyway", SHUTDOWN_GRACE_S)
        if self._sock is not None:
            self._sock.close()
        self.log.info("stopped listening on http://%s", self.listen)
