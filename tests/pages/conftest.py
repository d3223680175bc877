"""The pages in Debian's Chromium, driven by Playwright (never `playwright install`: the browser
is the distribution's), against a real control process on a real socket."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import zmq

from daemon.bus import Bus, endpoint
from daemon.messages import Caption, Channel, Command, CommandAck, Heartbeat, Message, SessionStatus, topic_of
from services.control.commands import CARRIERS
from tests.helpers import REPO, NotifySocket, free_port, running, service_env, tolk_cmd

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = REPO / "test-artifacts"
KIOSK = {"width": 800, "height": 480}
FULL_HD = {"width": 1920, "height": 1080}


# Package scope: the sync API runs an event loop in this thread while it is open, which would
# break every later test that starts its own (asyncio.run refuses to nest).
@pytest.fixture(scope="package")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run .ci/setup test (it installs chromium and fonts-noto-cjk)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@dataclass
class ControlProcess:
    url: str
    config: Path
    env: dict[str, str]
    log: Path


def start_control(rundir: Path, notify: NotifySocket, config_text: str, **env: str) -> Iterator[ControlProcess]:
    port = free_port()
    cfg = rundir / "tolk.toml"
    # Appended to a [control] table the config ends with, else in one of its own.
    table = "" if config_text.rstrip().rsplit("\n[", 1)[-1].startswith("control]") else "\n[control]"
    cfg.write_text(config_text + f'{table}\nlisten = "127.0.0.1:{port}"\n', encoding="utf-8")
    process_env = service_env(rundir, NOTIFY_SOCKET=notify.path, **env)
    log = rundir / "control.log"
    with running(tolk_cmd("service", "control", "--config", str(cfg)), process_env, log):
        notify.wait_for("READY=1", timeout=15)
        yield ControlProcess(f"http://127.0.0.1:{port}", cfg, process_env, log)


@dataclass
class FakeBox:
    """Test publishers named like the box's processes, on the real bus, from one thread.

    Every message is republished each tick (PUB/SUB drops what is sent before a subscriber
    connects: the slow joiner), which also keeps the heartbeats fresh. Commands from control
    are answered as the process that carries each out answers it.
    """

    rundir: Path
    names: tuple[str, ...] = ("capture", "camera", "session", "playback")
    session: SessionStatus = field(default_factory=lambda: SessionStatus(state="live", detail="connected"))
    captions: list[Caption] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, name="fake-box", daemon=True)

    def __enter__(self) -> FakeBox:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        buses = {name: Bus(name, self.rundir) for name in self.names}
        ctx = zmq.Context()
        commands = ctx.socket(zmq.SUB)
        commands.setsockopt(zmq.SUBSCRIBE, topic_of(Command))
        commands.connect(endpoint("control", Channel.STATE, self.rundir))
        try:
            while not self._stop.is_set():
                while commands.poll(0):
                    cmd = Message.from_frames(commands.recv_multipart())
                    carrier = buses.get(CARRIERS.get(getattr(cmd, "name", ""), ""))
                    if isinstance(cmd, Command) and cmd.id and carrier is not None:
                        carrier.publish(CommandAck(id=cmd.id, name=cmd.name, detail=f"{cmd.name} carried out"))
                for name, bus in buses.items():
                    bus.publish(Heartbeat(service=name, pid=1000, state="running", status=f"{name} ok"))
                messages: list[Message] = [self.session, *list(self.captions)]
                for msg in messages:
                    msg.seq = 0
                    buses["session"].publish(msg)
                commands.poll(200)  # a command wakes the loop at once; else a tick
        finally:
            commands.close(0)
            ctx.term()
            for bus in buses.values():
                bus.close()
