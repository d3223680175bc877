"""Opening the WebSocket to the realtime service, what a failure means, and one open connection.

The network is behind ``connect_service`` (the only place that calls websockets' client) so
the session loop itself only sees a connection or a ``ConnectFailure`` that says whether a
retry can help (a refused key cannot: no retry storm against the account).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus, InvalidURI
from websockets.protocol import State

from daemon.backend import is_loopback
from services.session import protocol

__all__ = ["ConnectFailure", "Link", "ServiceRejected", "connect_service", "is_loopback", "service_url"]

#: Handshake statuses after which only a person can help (key, account, model name).
_FATAL_STATUS = {
    401: "the service refused the API key (HTTP 401): check the key and its region ([service] url)",
    403: "access denied (HTTP 403): the account cannot use this model (no access, or overdue payment)",
    404: "not found (HTTP 404): check [service] url and [service] model",
}
MAX_MESSAGE_BYTES = 4 * 2**20


class ConnectFailure(Exception):
    """The connection could not be opened or was lost. ``fatal``: retrying cannot help."""

    def __init__(
        self, message: str, fatal: bool = False, throttled: bool = False, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.fatal = fatal
        self.throttled = throttled
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        return self.message


class ServiceRejected(Exception):
    """The service answered a handshake step with an ``error`` event."""

    def __init__(self, step: str, error: protocol.ServiceError) -> None:
        super().__init__(f"the service refused {step}: {error}")
        self.step = step
        self.error = error


@dataclass(eq=False)
class Link:
    """One open connection and what the session knows of it (a new one for each connection)."""

    ws: ClientConnection
    opened: float = field(default_factory=time.monotonic)
    live: bool = False  # session.updated came: audio may go
    ending: bool = False  # the session finishes or closes it: its close is no failure
    stalled: str = ""  # why a watcher gave it up; "" while none did
    answers: int = 0  # responses done on it
    audio_sent: bool = False  # the service takes an image only after audio
    finished: asyncio.Event = field(default_factory=asyncio.Event)  # session.finished came

    async def send(self, event: dict[str, Any]) -> None:
        await self.ws.send(protocol.encode(event))

    @property
    def open(self) -> bool:
        return self.ws.state is State.OPEN


def service_url(url: str, model: str) -> str:
    return f"{url}?model={quote(model, safe='')}"


def describe_handshake(exc: BaseException) -> ConnectFailure:
    """What a failed opening means for retrying."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status in _FATAL_STATUS:
            return ConnectFailure(_FATAL_STATUS[status], fatal=True)
        if status == 429:
            return ConnectFailure(
                "the service is throttling this account (HTTP 429)",
                throttled=True,
                retry_after_s=_retry_after(exc.response.headers.get("Retry-After")),
            )
        return ConnectFailure(f"the service refused the connection (HTTP {status})")
    if isinstance(exc, InvalidURI):
        return ConnectFailure(f"[service] url is not usable: {exc}", fatal=True)
    if isinstance(exc, TimeoutError):
        return ConnectFailure("timed out opening the connection")
    if isinstance(exc, InvalidHandshake):
        return ConnectFailure(f"handshake failed: {exc}")
    if isinstance(exc, OSError):
        return ConnectFailure(f"network: {exc.strerror or exc}")
    return ConnectFailure(f"cannot connect: {exc!r}")


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds (the HTTP-date form is not worth a kiosk's trust), bounded."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return None if seconds is None or seconds != seconds else min(max(seconds, 0.5), 600.0)


async def connect_service(url: str, model: str, api_key: str | None, timeout_s: float) -> ClientConnection:
    """Open the connection (handshake only); raises ConnectFailure."""
    if api_key and url.startswith("ws://") and not is_loopback(url):
        # Config refuses this too; the key itself must never depend on that having run.
        raise ConnectFailure(f"{url!r} would send the API key in clear text: use wss://", fatal=True)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    try:
        return await connect(
            service_url(url, model),
            additional_headers=headers,
            open_timeout=timeout_s,
            max_size=MAX_MESSAGE_BYTES,
            # A local endpoint is never reached through a proxy; a cloud one honours the system's.
            proxy=None if is_loopback(url) else True,
            # Bounded: a stop must not hang on a peer that never answers the close.
            close_timeout=2.0,
        )
    except (InvalidHandshake, OSError, TimeoutError) as exc:
        raise describe_handshake(exc) from None


def close_reason(exc: ConnectionClosed) -> str:
    """A lost connection's close frame in words."""
    close = exc.rcvd or exc.sent
    if close is None:
        return "no close frame (network lost)"
    return f"code {close.code}" + (f" ({close.reason})" if close.reason else "")


def retrying(delay_s: float) -> str:
    """When the next attempt comes, in words for the status."""
    when = f"{delay_s / 60:.0f} min" if delay_s >= 120 else f"{delay_s:.0f} s"
    return f"retrying in {when} or on a config change"
