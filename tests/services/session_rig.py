"""A session process against the simulator: its config, the process itself, a tap on what it
publishes, and capture's bus to feed it (shared by the session's tests and the conversation
bench).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import zmq

from daemon.bus import Bus, endpoint
from daemon.messages import (
    AudioIn,
    Channel,
    Heartbeat,
    Message,
)
from services.simulator import Simulator
from tests.helpers import running, service_env, tolk_cmd

KEY = "sk-test-7f3a9c2e51"


PERIOD = 640  # 20 ms of 16 kHz s16, as capture publishes


class SessionTap:
    """Reads everything the session process publishes, on its real sockets."""

    def __init__(self, rundir: Path) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SUBSCRIBE, b"")
        for channel in (Channel.STATE, Channel.BULK):
            self.sock.connect(endpoint("session", channel, rundir))
        self.seen: list[Message] = []

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            self.seen.append(Message.from_frames(self.sock.recv_multipart()))

    def wait_for(self, pred: Callable[[Message], bool], timeout: float = 15.0, what: str = "") -> Message:
        deadline = time.monotonic() + timeout
        while True:
            for msg in self.seen:
                if pred(msg):
                    return msg
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what or 'matching message'} within {timeout}s; last: {self.seen[-3:]}")
            self.pump(0.1)

    def status_line(self) -> str:
        beats = [m for m in self.seen if isinstance(m, Heartbeat)]
        return beats[-1].status if beats else ""

    def of(self, cls: type[Message]) -> list[Any]:
        return [m for m in self.seen if isinstance(m, cls)]

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def write_config(path: Path, url: str, target: str = "en", extra: str = "", service: str = "") -> Path:
    """A config for the simulator at ``url``; ``service``: more [service] lines, ``extra``: more tables."""
    path.write_text(
        f"""
[languages]
source = "zh"
target = "{target}"

[service]
url = "{url}"
connect_timeout_s = 3
finish_timeout_s = 3
{service}

[log]
level = "debug"
{extra}
""",
        encoding="utf-8",
    )
    return path


@contextmanager
def session_process(rundir: Path, config: Path, **env: str) -> Iterator[tuple[subprocess.Popen[bytes], SessionTap]]:
    tap = SessionTap(rundir)
    try:
        with running(
            tolk_cmd("service", "session", "-c", str(config)), service_env(rundir, **env), rundir / "log"
        ) as p:
            tap.wait_for(lambda m: isinstance(m, Heartbeat), what="a heartbeat")
            try:
                yield p, tap
            except BaseException:
                # What the session said is the first thing anyone debugging a failure here needs.
                print("--- session log (tail) ---\n" + (rundir / "log").read_text(errors="replace")[-6000:])
                raise
    finally:
        tap.close()


def feed_until(capture: Bus, sim: Simulator, pred: Callable[[], bool], timeout: float = 15.0) -> None:
    """Publish silent periods (as a muted-but-live mic does) until ``pred`` holds."""
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, f"timed out; simulator saw {sim.appends} appends"
        capture.bulk.publish(AudioIn(pcm=bytes(PERIOD)))
        time.sleep(0.02)


def publish(capture: Bus, pcm: bytes, speedup: float = 4.0) -> None:
    for i in range(0, len(pcm), PERIOD):
        capture.bulk.publish(AudioIn(pcm=pcm[i : i + PERIOD]))
        time.sleep(0.02 / speedup)


@pytest.fixture
def capture(rundir: Path) -> Iterator[Bus]:
    bus = Bus("capture", rundir)
    yield bus
    bus.close()
