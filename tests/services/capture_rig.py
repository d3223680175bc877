"""A capture process on a real alsa-lib microphone: its config, its start and stop, a paced feeder,
and a tap on what it publishes.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import zmq

from daemon.bus import endpoint
from daemon.messages import (
    Channel,
    Message,
    topic_of,
)
from tests.helpers import NotifySocket, running, service_env, tolk_cmd, wait_until

PERIOD_BYTES = 640  # 20 ms at 16 kHz mono S16_LE


class Tap:
    """A plain SUB socket on one of capture's sockets."""

    def __init__(self, rundir: Path, channel: Channel, *topics: type[Message]) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        for cls in topics:
            self.sock.setsockopt(zmq.SUBSCRIBE, topic_of(cls))
        self.sock.connect(endpoint("capture", channel, rundir))

    def recv(self, timeout: float) -> Message | None:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return Message.from_frames(self.sock.recv_multipart())

    def until(self, pred: Callable[[Any], object], timeout: float = 10.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            msg = self.recv(left)
            if msg is not None and pred(msg):
                return msg
        raise AssertionError(f"no {what or 'matching message'} within {timeout} s")

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class Feeder(threading.Thread):
    """A talker with a real clock: writes one period every 20 ms into the microphone's FIFO,
    what was said through ``say()`` or else ``idle`` (the pulse pipe-source itself has no
    clock: it hands on whatever the FIFO holds at once)."""

    def __init__(self, fd: int, idle: bytes = bytes(PERIOD_BYTES)) -> None:
        super().__init__(daemon=True)
        self.fd = fd
        self.idle = idle
        self.pending: deque[bytes] = deque()
        self.done = threading.Event()
        # Non-blocking: while the microphone's server is down nobody drains the FIFO.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)

    def say(self, pcm: bytes) -> None:
        self.pending.extend(pcm[i : i + PERIOD_BYTES] for i in range(0, len(pcm), PERIOD_BYTES))

    def run(self) -> None:
        start = time.monotonic()
        n = 0
        while not self.done.is_set():
            period = self.pending.popleft() if self.pending else self.idle
            with contextlib.suppress(OSError):
                os.write(self.fd, period)
            n += 1
            self.done.wait(max(0.0, start + n * 0.02 - time.monotonic()))

    def stop(self) -> None:
        self.done.set()
        self.join(2)


def capture_ready(notify: NotifySocket, timeout: float = 15.0) -> str:
    """The READY=1 datagram (with its STATUS=)."""
    return str(wait_until(lambda: next((m for m in notify.messages if "READY=1" in m), None), timeout, what="READY=1"))


def _config(rundir: Path, device: str, extra: str = 'streaming = "always"\n') -> Path:
    """These tests watch the device side: every period is published (the policy has its own tests)."""
    path = rundir / "tolk.toml"
    path.write_text(f'[audio]\ncapture_device = "{device}"\nperiod_ms = 20\n{extra}')
    return path


def start_capture(
    rundir: Path, home: Path, notify: NotifySocket, device: str = "test_mic", **env_extra: str
) -> AbstractContextManager[subprocess.Popen[bytes]]:
    env = service_env(rundir, HOME=str(home), NOTIFY_SOCKET=notify.path, **env_extra)
    cmd = tolk_cmd("service", "capture", "--config", str(_config(rundir, device)))
    return running(cmd, env, rundir / "capture.log")


def stop_capture(proc: subprocess.Popen[bytes], rundir: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, (rundir / "capture.log").read_text()
