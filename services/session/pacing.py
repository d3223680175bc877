"""The fleet's budget of new sessions: when this box may open its next one.

The service allows few new sessions a minute per account (10 on qwen3.8, protocol.md 8b), and a
fleet shares one account. When staff set a budget of B a minute (``[mqtt] fleet_topic``), the mqtt
process forwards it with the fleet's size N and this box's rank r among the boxes
(``FleetBudget``). Time is cut into turns of 60/(B - 1/2) s, counted from the epoch on the wall
clock every box keeps by NTP, and the boxes take the turns in rank order: box r owns turns r,
r+N, r+2N, … and may open one session in the first half of each. Each turn belongs to one box,
and openings are at least half a turn apart across a turn's edge, so no 60 s ever holds more
than B of them, whatever happens at once (a venue-wide outage ends and every box reconnects).
The price: a box that lost its connection may wait up to N turns (50 boxes at 10 a minute: about
5 minutes) for its next one.

Without a budget nothing waits here. A box configured with a fleet topic waits at most
``FIRST_WORD_S`` at start for the mqtt process's first word, so that a fleet booting together
after a power cut does not open every session at once; a budget not repeated for ``FRESH_S``
(the mqtt process stopped) no longer holds anyone back.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable

from daemon import config as config_mod
from daemon.bus import Subscriber
from daemon.messages import FleetBudget

#: The mqtt process repeats the budget every few seconds; silent this long, it is gone.
FRESH_S = 30.0
#: At start, how long a box with a fleet topic waits for the budget before its first session.
FIRST_WORD_S = 20.0
#: The share of its turn in which a box may open a session.
OPEN_SHARE = 0.5
#: Budgets below this are not taken (a turn would be longer than any box should wait).
MIN_PER_MINUTE = 1.0


class FleetPacing:
    def __init__(
        self,
        cfg: config_mod.Config,
        wall: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.wall = wall
        self.clock = clock
        self._budget: FleetBudget | None = None
        self._heard_at = 0.0
        self._first_word_by = clock() + FIRST_WORD_S if cfg.mqtt.broker and cfg.mqtt.fleet_topic else 0.0
        self._last_open = -math.inf  # wall time of the last session this box opened
        self._news = asyncio.Event()

    async def follow(self, sub: Subscriber) -> None:
        """Take each ``FleetBudget`` the mqtt process publishes, until cancelled."""
        async for msg in sub:
            if isinstance(msg, FleetBudget):
                self.heard(msg)

    def heard(self, msg: FleetBudget) -> None:
        self._budget, self._heard_at = msg, self.clock()
        self._first_word_by = 0.0
        self._news.set()

    def wait(self) -> tuple[float, str]:
        """How long before this box may open a session (0: now), and why it waits."""
        if (budget := self._current()) is None:
            left = self._first_word_by - self.clock()
            return (left, "waiting for the fleet's session budget") if left > 0 else (0.0, "")
        turn_s = 60.0 / (budget.sessions_per_minute - OPEN_SHARE)
        boxes = max(1, budget.boxes)
        cycle_s = turn_s * boxes
        offset = min(max(0, budget.rank), boxes - 1) * turn_s
        now = self.wall()
        start = math.floor((now - offset) / cycle_s) * cycle_s + offset  # this box's latest turn
        if now < start + turn_s * OPEN_SHARE and self._last_open < start:
            return 0.0, ""
        left = start + cycle_s - now
        why = (
            f"the fleet's budget: {budget.sessions_per_minute:g} new sessions a minute for {boxes} boxes; "
            f"this box's turn in {left:.0f} s"
        )
        return left, why

    async def turn(self, waiting: Callable[[str], None]) -> None:
        """Until this box may open a session; then that turn is taken. ``waiting`` hears why it waits."""
        while True:
            left, why = self.wait()
            if left <= 0:
                break
            waiting(why)
            self._news.clear()
            with contextlib.suppress(TimeoutError):
                # A new budget may move the turn; a budget nobody repeats must stop holding the box.
                await asyncio.wait_for(self._news.wait(), min(left, FRESH_S))
        self._last_open = self.wall()

    def _current(self) -> FleetBudget | None:
        budget = self._budget
        if budget is None or budget.sessions_per_minute < MIN_PER_MINUTE or self.clock() - self._heard_at > FRESH_S:
            return None
        return budget
