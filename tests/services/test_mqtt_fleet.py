"""Ten boxes on one real Mosquitto: ten ``tolk service mqtt`` processes, each on its own bus, each
with control's request handling (services/control/remote.py and its config store, the code
``tolk service control`` runs for them) in this test's process, publishing control's heartbeats.

All ten are discovered; one ``config/set`` per box is applied (the box's overlay and its state say
so); the fleet's budget reaches each box's session side with the fleet's size and the box's rank;
after the broker is down for a while, the boxes come back spread over time, not at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import zmq

from daemon import config as config_mod
from daemon.bus import Bus, endpoint
from daemon.messages import Channel, FleetBudget, Heartbeat, Message, RemoteCommand, RemotePatch
from services.control.commands import CommandDesk
from services.control.remote import RemoteDesk
from services.control.store import ConfigStore
from tests.helpers import rmtree, running, service_env, short_tmpdir, tolk_cmd
from tests.services.mqtt_rig import Broker, Watcher, needs_mosquitto
from tests.services.mqtt_rig import broker as broker  # the fixture

pytestmark = needs_mosquitto

BOXES = [f"box-{i:02d}" for i in range(10)]
TARGETS = ["ja", "de", "fr", "es", "it", "ko", "ru", "pt", "vi", "yue"]  # each a change from "en"
FLEET = "tolk/fleet"
OUTAGE_S = 3.0


class ControlStandIns:
    """Control's request handling for each box (its own bus, config store and overlay), on one
    event loop in a thread, publishing control's heartbeat each second as the real one does."""

    def __init__(self, boxes: dict[str, Path]) -> None:
        self.boxes = boxes
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._main, name="control-stand-ins", daemon=True)
        self.thread.start()
        assert self.ready.wait(20), "the stand-ins did not start"

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        buses, tasks = [], []
        try:
            for rundir in self.boxes.values():
                bus = Bus("control", rundir)
                buses.append(bus)
                config = rundir / "tolk.toml"
                store = ConfigStore(config_mod.load(config), str(config), overlay=rundir / "state" / "config.toml")
                desk = RemoteDesk(store, CommandDesk(bus.publish), bus.publish)
                tasks.append(asyncio.create_task(desk.serve(bus.subscribe(["mqtt"], RemotePatch, RemoteCommand))))
            self.ready.set()
            while not self.stop.is_set():
                for bus in buses:
                    bus.publish(Heartbeat(service="control", pid=1, state="running", status="stand-in"))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), 1.0)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for bus in buses:
                bus.close()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


class BusTap:
    """What one box's mqtt process publishes on its bus (the budget it hands to the session)."""

    def __init__(self, rundir: Path) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"fleet.budget")
        self.sock.connect(endpoint("mqtt", Channel.STATE, rundir))

    def next_budget(self, timeout: float = 30.0) -> FleetBudget:
        if not self.sock.poll(int(timeout * 1000)):
            raise AssertionError(f"no fleet budget on the bus within {timeout}s")
        msg = Message.from_frames(self.sock.recv_multipart())
        assert isinstance(msg, FleetBudget)
        return msg

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


@contextlib.contextmanager
def _ten_boxes(broker: Broker) -> Iterator[dict[str, Path]]:
    dirs = {box: short_tmpdir(f"tk{box[-2:]}") for box in BOXES}
    try:
        for box, rundir in dirs.items():
            (rundir / "state").mkdir()
            (rundir / "tolk.toml").write_text(
                '[languages]\nsource = "zh"\ntarget = "en"\n[service]\nfallback_after_s = 0\n'
                + broker.box_config(box, f'fleet_topic = "{FLEET}"')
            )
        stand_ins = ControlStandIns(dirs)
        with contextlib.ExitStack() as stack:
            stack.callback(stand_ins.close)
            for rundir in dirs.values():
                cmd = tolk_cmd("service", "mqtt", "--config", str(rundir / "tolk.toml"))
                stack.enter_context(running(cmd, service_env(rundir), rundir / "mqtt.log"))
            try:
                yield dirs
            except BaseException:
                for box, rundir in dirs.items():
                    print(f"--- {box} ---\n" + (rundir / "mqtt.log").read_text(errors="replace")[-1500:])
                raise
    finally:
        for rundir in dirs.values():
            rmtree(rundir)


def _online(watcher: Watcher, box: str, since: int, timeout: float) -> float:
    seen = watcher.wait_for(
        lambda s: s.topic == f"tolk/{box}/availability" and s.payload == b"online", timeout, since, f"{box} online"
    )
    return seen.at


def _shows(state: dict, target: str) -> bool:
    return state["languages"]["target"] == target and state["processes"]["control"]["up"]


def test_ten_boxes_on_one_broker(broker: Broker) -> None:
    watcher = Watcher(broker)
    try:
        with _ten_boxes(broker) as dirs:
            for box in BOXES:  # all discovered, each its own device
                found = watcher.on(f"homeassistant/device/tolk_{box}/config", 60)
                assert found["dev"]["ids"] == [f"tolk_{box}"]

            marks = {}
            for box, target in zip(BOXES, TARGETS, strict=True):
                marks[box] = watcher.mark()
                watcher.publish(f"tolk/{box}/config/set", json.dumps({"languages": {"target": target}}))
            for box, target in zip(BOXES, TARGETS, strict=True):
                result = watcher.on(f"tolk/{box}/config/result", 30, since=marks[box])
                assert result["ok"] is True and result["changed"] == ["languages"], (box, result)
                # The box's state says it, with control's simulated heartbeat beside it.
                watcher.on(f"tolk/{box}/state", 30, since=marks[box], where=lambda d, t=target: _shows(d, t))
                assert f'target = "{target}"' in (dirs[box] / "state" / "config.toml").read_text()

            # The fleet's budget, set once by staff, reaches every box with its rank among ten.
            taps = {box: BusTap(rundir) for box, rundir in dirs.items()}
            try:
                watcher.publish(f"{FLEET}/budget", json.dumps({"sessions_per_minute": 10}), retain=True)
                for rank, box in enumerate(BOXES):
                    budget = taps[box].next_budget()
                    while budget.sessions_per_minute != 10 or budget.boxes != len(BOXES):
                        budget = taps[box].next_budget()
                    assert budget.rank == rank, box
            finally:
                for tap in taps.values():
                    tap.close()

            # A venue-wide outage of the broker: every box loses it at the same moment.
            broker.stop()
            time.sleep(OUTAGE_S)
            broker.start()
            back_at = time.monotonic()
            after = Watcher(broker, "watcher-after")
            try:
                returns = {box: _online(after, box, 0, 120) - back_at for box in BOXES}
                for box in BOXES:  # each announced again (the broker kept nothing)
                    after.on(f"homeassistant/device/tolk_{box}/config", 30)
            finally:
                after.close()
    finally:
        watcher.close()
    times = sorted(returns.values())
    spread = times[-1] - times[0]
    print(f"reconnects after a {OUTAGE_S:g} s outage, s after the broker was back: "
          + ", ".join(f"{t:.2f}" for t in times) + f"; spread {spread:.2f} s")  # fmt: skip
    # Spread over time, not in one burst: the boxes' jitter (their own seeds) keeps them apart.
    assert spread >= 1.0, times
    assert max(times) < 90.0
