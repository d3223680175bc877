"""The fleet's budget of new sessions, as the session takes it (services/session/pacing.py).

First the arithmetic, on the session's own pacing object with clocks the test turns: fifty boxes
that all want a session at once, and keep wanting one, never open more than the budget in any
minute. Then the real session process against the simulator, told a budget on the bus as the mqtt
process tells it: it waits for the fleet's first word, opens its session in its own turn, and a
restart waits for the next one.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

from daemon import config as config_mod
from daemon.backoff import FLEET_SPREAD, Backoff, box_rng
from daemon.bus import Bus
from daemon.messages import Command, CommandAck, FleetBudget, SessionStatus
from services.session.pacing import FleetPacing
from services.simulator import Simulator, running_in_thread
from tests.helpers import wait_until
from tests.services.session_rig import KEY, session_process, write_config
from tests.services.session_rig import capture as capture  # the fixture


class _Clocks:
    def __init__(self, wall: float) -> None:
        self.wall = wall
        self.mono = 1000.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


async def test_fifty_boxes_never_open_more_than_the_budget_in_any_minute() -> None:
    budget, boxes = 10, 50
    clocks = _Clocks(wall=1_800_000_123.4)
    cfg = config_mod.Config()
    pacers = [FleetPacing(cfg, wall=lambda: clocks.wall, clock=lambda: clocks.mono) for _ in range(boxes)]
    rng = random.Random(7)
    wants = [0.0] * boxes  # every box wants a session at once (a venue-wide outage just ended)
    opened: list[float] = []
    start = clocks.wall
    while clocks.wall < start + 900:
        now = clocks.wall
        if round((now - start) * 10) % 50 == 0:  # the mqtt process repeats the budget every 5 s
            for rank, pacing in enumerate(pacers):
                pacing.heard(FleetBudget(sessions_per_minute=budget, boxes=boxes, rank=rank))
        for box, pacing in enumerate(pacers):
            if now - start >= wants[box] and pacing.wait()[0] <= 0:
                await pacing.turn(lambda _why: None)
                opened.append(now)
                # Then it wants another soon (a flapping network): the worst case for the budget.
                wants[box] = now - start + rng.uniform(0.0, 5.0)
        clocks.advance(0.1)
    # No turn went unused while boxes wanted one, and no 60 s held more than the budget.
    turn_s = 60.0 / (budget - 0.5)
    assert len(opened) >= 0.95 * 900 / turn_s
    window = max(sum(1 for t in opened if s <= t < s + 60.0) for s in opened)
    assert window <= budget, window
    # Once each box's turn came, it had its session: the first round took one pass over the fleet.
    first_round = sorted(opened)[boxes - 1] - start
    assert first_round <= boxes * turn_s


async def test_a_box_waits_only_for_a_budget_it_heard_recently() -> None:
    clocks = _Clocks(wall=1_800_000_000.0)
    plain = FleetPacing(config_mod.Config(), wall=lambda: clocks.wall, clock=lambda: clocks.mono)
    assert plain.wait() == (0.0, "")  # no budget, no fleet topic: nothing to wait for
    fleet = config_mod.validate({"mqtt": {"broker": "mqtt://127.0.0.1", "fleet_topic": "tolk/fleet"}})
    pacing = FleetPacing(fleet, wall=lambda: clocks.wall, clock=lambda: clocks.mono)
    left, why = pacing.wait()
    assert left > 0 and "waiting for the fleet's session budget" in why
    clocks.advance(25.0)  # the mqtt process never said a word (no broker): the session goes ahead
    assert pacing.wait()[0] == 0.0
    pacing.heard(FleetBudget(sessions_per_minute=6, boxes=20, rank=0))
    clocks.wall = 1_800_000_000.0 + 60.0 / 5.5 * 5  # inside box 5's turn, not box 0's
    left, why = pacing.wait()
    assert left > 0 and "6 new sessions a minute for 20 boxes" in why
    clocks.advance(31.0)  # the budget was not repeated: it no longer holds the box back
    assert pacing.wait()[0] == 0.0


def test_each_box_draws_its_own_jitter_and_the_same_every_time() -> None:
    def delays(box: str) -> list[float]:
        backoff = Backoff(first_s=1.0, max_s=60.0, spread=FLEET_SPREAD, rng=box_rng(box))
        return [backoff.next_delay() for _ in range(6)]

    assert delays("box-01") == delays("box-01")
    assert delays("box-01") != delays("box-02")
    assert all(0.5 * 2**i <= d <= 2**i for i, d in enumerate(delays("box-03")))


def _wall_time(sim: Simulator, index: int) -> float:
    """When connection ``index`` opened, on the wall clock (the simulator stamps it monotonic)."""
    return time.time() - (time.monotonic_ns() - sim.connections[index].opened_ns) / 1e9


def test_the_session_opens_only_in_its_turn(rundir: Path, capture: Bus) -> None:
    per_minute, boxes, rank = 60.0, 6, 3
    turn_s = 60.0 / (per_minute - 0.5)
    cycle_s, offset = turn_s * boxes, turn_s * rank
    mqtt, control = Bus("mqtt", rundir), Bus("control", rundir)
    stop = threading.Event()
    try:
        with running_in_thread(api_key=KEY) as sim:
            extra = '[mqtt]\nbroker = "mqtt://127.0.0.1:1883"\nfleet_topic = "tolk/fleet"\nbox_id = "pace-box"\n'
            config = write_config(rundir / "tolk.toml", sim.url, extra=extra)
            with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
                # A box in a fleet waits for the fleet's word before its first session.
                tap.wait_for(lambda m: isinstance(m, SessionStatus) and "fleet's session budget" in m.detail)
                assert sim.connections == []

                def tell() -> None:  # as the mqtt process does: repeated (the slow joiner)
                    while not stop.is_set():
                        mqtt.publish(FleetBudget(sessions_per_minute=per_minute, boxes=boxes, rank=rank))
                        stop.wait(0.5)

                teller = threading.Thread(target=tell, daemon=True)
                teller.start()
                wait_until(lambda: sim.events_of("session.update"), 3 * cycle_s, what="the first session")
                first = _wall_time(sim, 0)
                assert (first - offset) % cycle_s < turn_s / 2 + 0.8  # inside the open half of its turn

                # Restarted at once: that turn is spent, so the next session waits for the next one.
                tap.wait_for(lambda m: isinstance(m, SessionStatus) and m.state == "live")
                while not tap.of(CommandAck):
                    control.publish(Command(name="restart-session", id="r1"))
                    tap.pump(0.2)
                tap.wait_for(lambda m: isinstance(m, SessionStatus) and "this box's turn in" in m.detail, what="a wait")
                wait_until(lambda: len(sim.connections) > 1, 3 * cycle_s, what="the second session")
                second = _wall_time(sim, 1)
                assert (second - offset) % cycle_s < turn_s / 2 + 0.8
                assert second - first > cycle_s - turn_s, (first, second)
    finally:
        stop.set()
        mqtt.close()
        control.close()
    assert sim.violations == []
