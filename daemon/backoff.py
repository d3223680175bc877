"""The one backoff: capped exponential delays with jitter, for every retry the box makes.

Devices (a microphone, a speaker, a camera) retry from 0.5 s up to a few seconds, jittered ±20 %;
the session's reconnects go up to 30 s and are jittered downwards from the ceiling (half fixed,
half random), so that a fleet of kiosks coming back after a venue-wide outage never reconnects in
step and never waits longer than the ceiling. A box's random factors come from its own seed,
derived from its box id (``box_rng``): the spread across a fleet is the same at every outage,
and two boxes never draw the same sequence.
"""

from __future__ import annotations

import hashlib
import random

DEVICE_SPREAD = (0.8, 1.2)
FLEET_SPREAD = (0.5, 1.0)


class Backoff:
    """Delays of ``first_s`` doubling up to ``max_s``, each times a random factor in ``spread``;
    ``reset()`` after a success."""

    def __init__(
        self,
        first_s: float = 0.5,
        max_s: float = 5.0,
        spread: tuple[float, float] = DEVICE_SPREAD,
        rng: random.Random | None = None,
    ) -> None:
        self.first_s = first_s
        self.max_s = max_s
        self.spread = spread
        self.failures = 0
        self._rng = rng or random.Random()

    def next_delay(self, floor_s: float = 0.0) -> float:
        """The wait before the next attempt (at least ``floor_s``, e.g. a server's Retry-After)."""
        ceiling = min(self.max_s, self.first_s * (2 ** min(self.failures, 30)))
        self.failures += 1
        return max(floor_s, ceiling * self._rng.uniform(*self.spread))

    def reset(self) -> None:
        self.failures = 0


def box_rng(box_id: str) -> random.Random:
    """The jitter source of the box ``box_id`` (daemon.fleet): deterministic per box, distinct across boxes."""
    seed = hashlib.sha256(f"tolk jitter {box_id}".encode()).digest()[:8]
    return random.Random(int.from_bytes(seed, "big"))
