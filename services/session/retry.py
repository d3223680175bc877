"""How long the session waits before it connects again, and what its state says meanwhile.

The delays come from the one backoff (``daemon.backoff``, exponential with jitter); a failure
that retrying cannot mend (a refused key, account or configuration) waits long instead, so a
fleet never storms the service's accounts. A connection that closes within ``STABLE_S`` of
opening without an answer counts against the service: ``FLAPPING_LIMIT`` of them in a row and
the session says it is failing. The cloud out of reach for long enough hands over to the box's
own engine (``fallback.py``); the engine failing hands back.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from daemon.backoff import FLEET_SPREAD, Backoff
from daemon.config import Config
from services.session.connection import ConnectFailure, ServiceRejected, retrying
from services.session.fallback import CloudFallback

#: A configuration the service refused is tried again this rarely (or at once on a config change).
CONFIG_RETRY_S = 60.0
#: A refused key or account: a person must act, but a paid bill or a restored key should not
#: need one at the box too. Retried this rarely, or at once on a config change.
FATAL_RETRY_S = 15 * 60.0
#: Throttled with no Retry-After: never sooner than this.
THROTTLED_FLOOR_S = 5.0
#: A connection that stayed open this long resets the backoff; shorter ones count as failures.
STABLE_S = 10.0
#: This many short-lived connections in a row: the service is not really working; say so.
FLAPPING_LIMIT = 3


@dataclass(frozen=True)
class Wait:
    """What to wait before the next attempt, and the state that says why."""

    delay_s: float
    state: str
    detail: str
    error_code: str | None = None


class RetryPolicy:
    def __init__(self, fallback: CloudFallback, rng: random.Random | None = None) -> None:
        self.fallback = fallback
        self.backoff = Backoff(max_s=30.0, spread=FLEET_SPREAD, rng=rng)
        self.short_lived = 0  # connections in a row that closed within STABLE_S, unanswered

    def reset(self) -> None:
        """The next attempt goes at once (a restart asked for, a config change)."""
        self.backoff.reset()

    def connection_closed(self, lasted_s: float, answered: bool, clean: bool) -> bool:
        """A connection ended; True when it counts as short-lived."""
        # A connection the service answered on did useful work, however short it was.
        if lasted_s >= STABLE_S or answered:
            self.backoff.reset()
            self.short_lived = 0
        elif not clean:
            self.short_lived += 1
            return True
        return False

    def after_failure(self, exc: ConnectFailure, effective: Config, now: float) -> Wait:
        """A connection lost or refused; ``effective``: the config the service is asked for."""
        if self.fallback.engine_failed():
            detail = f"the box's own engine failed ({exc}): trying the cloud again"
            return Wait(self.backoff.next_delay(), "backoff", detail)
        if self.fallback.failed(effective, exc, now):
            return Wait(0.0, "connecting", f"the cloud is unreachable ({exc}): to the box's own engine")
        if exc.fatal:
            return Wait(FATAL_RETRY_S, "failed", f"{exc}; {retrying(FATAL_RETRY_S)}")
        if self.short_lived >= FLAPPING_LIMIT:
            delay = max(CONFIG_RETRY_S, self.backoff.next_delay())
            detail = (
                f"the service closed {self.short_lived} connections in a row within {STABLE_S:.0f} s "
                f"of opening them (last: {exc}); {retrying(delay)}"
            )
            return Wait(delay, "failed", detail)
        floor = exc.retry_after_s if exc.retry_after_s is not None else 0.0
        if exc.throttled and exc.retry_after_s is None:
            floor = THROTTLED_FLOOR_S
        delay = self.backoff.next_delay(floor_s=floor)
        why = f"; {self.fallback.unservable}" if self.fallback.unservable else ""
        return Wait(delay, "backoff", f"retry in {delay:.1f} s after: {exc}{why}")

    def after_rejection(self, exc: ServiceRejected) -> Wait:
        """The service answered the handshake with an error."""
        if self.fallback.engine_failed():
            # The engine refused what the cloud may well take: back to the cloud, not a long wait.
            detail = f"the box's own engine refused ({exc}); trying the cloud again"
            return Wait(self.backoff.next_delay(), "backoff", detail)
        delay = FATAL_RETRY_S if exc.error.fatal else CONFIG_RETRY_S
        return Wait(delay, "failed", f"{exc}; {retrying(delay)}", error_code=exc.error.code)
