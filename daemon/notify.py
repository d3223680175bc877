"""systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING — a no-op outside systemd."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("tolk.notify")


class Notifier:
    """Talks to ``$NOTIFY_SOCKET`` when it is set, without ever waiting on the supervisor.

    libsystemd's sd_notify() sends on a blocking socket: when the supervisor reads late and its
    queue is full (``net.unix.max_dgram_qlen``, 10 datagrams by default), the sender stalls, and a
    service's whole event loop with it. The protocol is a datagram of ``KEY=VALUE`` lines
    (sd_notify(3) documents it for standalone implementations), so it is sent here with
    ``MSG_DONTWAIT``; what a full queue refuses is kept, newest value per key, and goes out with
    the next notification (the heartbeat sends one every few seconds).
    """

    def __init__(self) -> None:
        self.socket = os.environ.get("NOTIFY_SOCKET") or None
        self._address = _address(self.socket) if self.socket else None
        self._sock: socket.socket | None = None
        self._pending: dict[str, str] = {}
        self._refused_logged = False
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_usec = int(usec) if usec.isdigit() and mine else 0
        self._last_status = ""

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to pet the watchdog: half its timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def _send(self, state: str) -> None:
        if self._address is None:
            return
        for line in state.splitlines():
            key, _, value = line.partition("=")
            self._pending[key] = value
        message = "\n".join(f"{k}={v}" for k, v in self._pending.items())
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._sock.sendto(message.encode(), socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL, self._address)
        except BlockingIOError:
            if not self._refused_logged:
                self._refused_logged = True
                said = message.replace("\n", " ")
                log.warning("systemd reads its notify socket late (%s): %s kept for the next try", self.socket, said)
            return
        except OSError as exc:
            # A vanished supervisor socket must not take the service down with it.
            log.warning("cannot notify systemd (%s): %s", self.socket, exc)
            self._pending.clear()
            return
        self._pending.clear()
        self._refused_logged = False

    def ready(self, status: str) -> None:
        self._last_status = status
        self._send(f"READY=1\nSTATUS={status}")

    def status(self, status: str) -> None:
        if status != self._last_status:
            self._last_status = status
            self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self, status: str = "stopping") -> None:
        self._send(f"STOPPING=1\nSTATUS={status}")


def _address(path: str) -> str | bytes:
    """sd_notify(3): a path, or an abstract socket written with a leading ``@``."""
    return b"\0" + path[1:].encode() if path.startswith("@") else path


#: The first file descriptor a socket-activated process is given (sd_listen_fds(3)).
LISTEN_FDS_START = 3


def listen_sockets() -> list[socket.socket]:
    """The listening sockets systemd (or ``tolk run``) passed, as sd_listen_fds(3) reads them; [] if none.

    ``LISTEN_FDS``/``LISTEN_PID`` are taken out of the environment: they were for this process, not
    for the children it may start.
    """
    count, pid = os.environ.pop("LISTEN_FDS", ""), os.environ.pop("LISTEN_PID", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if not count.isdigit() or pid != str(os.getpid()):
        return []
    return [socket.socket(fileno=LISTEN_FDS_START + k) for k in range(int(count))]
