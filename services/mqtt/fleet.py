"""The fleet's budget of new sessions, read from the broker and handed to the session.

Staff publish the budget, retained, on ``<fleet_topic>/budget``: a number of new sessions per
minute for the whole fleet (``10``, or ``{"sessions_per_minute": 10}``). Each box announces
itself, retained, on ``<fleet_topic>/boxes/<box id>``; the boxes heard there (this one always
included) are the fleet, ranked by box id. The session gets the budget, the fleet's size and
this box's rank (``FleetBudget``) and takes its turns by them (services/session/pacing.py).

A box that left for good is forgotten by clearing its retained message (an empty payload). A
budget that cannot be read is reported and the last good one kept: a typo must not let the whole
fleet reconnect at once. The first word to the session waits ``SETTLE_S`` after the
subscriptions were made, for the retained messages to arrive: said earlier, it would miss them.
"""

from __future__ import annotations

import json
import logging
import math

from daemon.messages import FleetBudget
from services.mqtt.link import Incoming
from services.mqtt.topics import Topics

#: The session hears the budget this often (a restarted session learns it within this).
REPEAT_S = 5.0
#: After connecting, the retained budget and roster come at once; this is plenty for them.
SETTLE_S = 1.0
MAX_PER_MINUTE = 600.0


class FleetRoster:
    def __init__(self, topics: Topics, log: logging.Logger) -> None:
        self.topics = topics
        self.log = log
        self.boxes: set[str] = {topics.box}
        self.per_minute = 0.0
        #: Whether the session may be told (the retained messages had time to arrive once).
        self.settled = False
        self.problem = ""

    def hear(self, incoming: Incoming) -> bool:
        """Take a message of the fleet's topics; whether it was one."""
        if incoming.topic == self.topics.fleet_budget:
            self._budget(incoming.payload)
            return True
        member = self.topics.member_of_fleet(incoming.topic)
        if member is None:
            return False
        if incoming.payload:
            self.boxes.add(member)
        elif member != self.topics.box:
            self.boxes.discard(member)
        return True

    def message(self) -> FleetBudget:
        ranked = sorted(self.boxes)
        return FleetBudget(sessions_per_minute=self.per_minute, boxes=len(ranked), rank=ranked.index(self.topics.box))

    def member_payload(self) -> str:
        return json.dumps({"box": self.topics.box, "prefix": self.topics.prefix})

    def _budget(self, payload: bytes) -> None:
        if not payload.strip():
            self.per_minute, self.problem = 0.0, ""
            self.log.info("the fleet's session budget was cleared: reconnects are only jittered")
            return
        try:
            value = json.loads(payload)
            if isinstance(value, dict):
                value = value["sessions_per_minute"]
            per_minute = float(value)
            if isinstance(value, bool) or not math.isfinite(per_minute) or not 1 <= per_minute <= MAX_PER_MINUTE:
                raise ValueError(f"{value!r} is not between 1 and {MAX_PER_MINUTE:g}")
        except (ValueError, KeyError, TypeError) as exc:
            kept = f"{self.per_minute:g} sessions a minute" if self.per_minute else "no budget"
            self.problem = (
                f"{self.topics.fleet_budget}: cannot read {payload[:80]!r} ({exc}); keeping {kept}. "
                'Publish a number, or {"sessions_per_minute": N}'
            )
            self.log.error("%s", self.problem)
            return
        self.per_minute, self.problem = per_minute, ""
        self.log.info("the fleet's session budget: %g new sessions a minute", per_minute)
