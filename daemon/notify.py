"""systemd's notify protocol: READY, STATUS, WATCHDOG, RELOADING, STOPPING — a no-op outside systemd."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("tolk.notify")


class Notifier:
    """Talks to ``$NOTIFY_SOCKET`` through systemd-python when it is set."""

    def __init__(self) -> None:
        self.socket = os.environ.get("NOTIFY_SOCKET") or None
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_usec = int(usec) if usec.isdigit() and mine else 0
        self._last_status = ""
        self.sent: list[str] = []

    @property
    def enabled(self) -> bool:
        return self.socket is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to pet the watchdog: half its timeout, as sd_watchdog_enabled(3) advises."""
        return self.watchdog_usec / 2e6 if self.watchdog_usec else None

    def _send(self, state: str) -> None:
        if not self.enabled:
            return
        from systemd import daemon  # type: ignore[attr-defined]  # only needed under systemd

        try:
            daemon.notify(state)
        except OSError as exc:
            # A vanished supervisor socket must not take the service down with it.
            log.warning("cannot notify systemd (%s): %s", self.socket, exc)
            return
        self.sent.append(state)
        del self.sent[:-50]

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
