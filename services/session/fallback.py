"""``[service] backend = "auto"`` with a key: the box's own engine while the cloud is unreachable.

Only failures that say the cloud is out of reach count (a refused key or throttling means it
answered); the engine is never used for a pair it cannot translate; its failing or refusing, and
``restart-session``, send the next attempt to the cloud. docs/session.md has the whole story.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from urllib.parse import urlsplit

from daemon import backend, engine_languages
from daemon import config as config_mod
from services.session.connection import ConnectFailure

#: At most this long between checks of the cloud while the engine stands in for it.
PROBE_EVERY_S = 30.0

log = logging.getLogger("tolk.session")


class CloudFallback:
    def __init__(self) -> None:
        self.active = False
        self.down_since: float | None = None  # monotonic time of the first failure of this outage
        #: Why the engine cannot stand in (the pair it refuses), for the status; "" when it can.
        self.unservable = ""

    def url(self, cfg: config_mod.Config) -> str:
        """Where the next connection goes."""
        return backend.engine_url(cfg) if self.active else backend.session_url(cfg)

    def label(self, cfg: config_mod.Config) -> str:
        """The backend in use, for the status: "cloud", "local" or ``backend.FALLBACK``."""
        return backend.FALLBACK if self.active else backend.resolve(cfg)

    def failed(self, cfg: config_mod.Config, exc: ConnectFailure, now: float) -> bool:
        """A connection to the cloud failed; True when the engine takes over from now on.

        ``cfg`` carries the languages the service is asked for (the direction in effect).
        """
        self.unservable = ""
        if self.active or exc.fatal or exc.throttled or not backend.standby(cfg) or backend.resolve(cfg) != "cloud":
            return False
        if self.down_since is None:
            self.down_since = now
        if now - self.down_since < cfg.service.fallback_after_s:
            return False
        if (refused := engine_refuses(cfg)) is not None:
            self.unservable = refused
            return False
        self.active = True
        log.warning(
            "the cloud has been unreachable for %.0f s (last: %s): translating with the box's own engine",
            now - self.down_since,
            exc,
        )
        return True

    def engine_failed(self) -> bool:
        """A connection to the engine failed or was refused: True when the next one goes to the cloud."""
        if not self.active:
            return False
        log.warning("the box's own engine failed: trying the cloud again")
        self.active = False
        return True

    def went_live(self) -> None:
        """A connection went live: a cloud outage, if one was being timed, is over."""
        if not self.active:
            self.down_since = None

    def reset(self) -> None:
        """Back to the cloud (it answers again, or its settings changed)."""
        self.active = False
        self.down_since = None


def engine_refuses(cfg: config_mod.Config) -> str | None:
    """Why the engine cannot translate ``cfg``'s pair (the engine's own words), or None when it can."""
    source, target = cfg.languages.source, cfg.languages.target
    marian = engine_languages.marian_pairs(cfg.engine.marian_dir)
    if engine_languages.pair(source, target, marian) is not None:
        return None
    return f"the box's own engine cannot translate {source} into {target}, so it cannot stand in"


def probe_interval(cfg: config_mod.Config) -> float:
    return min(PROBE_EVERY_S, max(1.0, cfg.service.fallback_after_s))


async def cloud_answers(cfg: config_mod.Config) -> bool:
    """Whether the cloud's host takes a connection (TCP, and TLS for ``wss``) within the timeout."""
    parts = urlsplit(cfg.service.url)
    secure = parts.scheme == "wss"
    host, port = parts.hostname or "", parts.port or (443 if secure else 80)
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=ssl.create_default_context() if secure else None),
            cfg.service.connect_timeout_s,
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):  # it answered; how it hung up does not matter
        await writer.wait_closed()
    return True
