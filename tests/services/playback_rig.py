"""A playback process to a raw-file speaker, with stand-ins for the session (it sends the answers)
and capture (its speech starts), and a tap on playback's states.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import zmq

from daemon.bus import endpoint
from daemon.messages import (
    AudioOut,
    Channel,
    Heartbeat,
    Message,
    PlaybackState,
    SpeechActivity,
    topic_of,
)
from tests.helpers import NotifySocket, wait_until


class FakeSession:
    """The session's bulk socket, as an XPUB that reports playback's subscription."""

    def __init__(self, rundir: Path) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.bind(endpoint("session", Channel.BULK, rundir))
        self.seq = 0

    def wait_for_subscriber(self, timeout: float = 15.0) -> None:
        assert self.sock.poll(int(timeout * 1000)), "playback never subscribed to the session's audio"
        assert self.sock.recv() == b"\x01" + topic_of(AudioOut)

    def send(self, pcm: bytes, response_id: str, rate: int = 24000) -> int:
        self.seq += 1
        t = time.monotonic_ns()
        self.sock.send_multipart(AudioOut(pcm=pcm, response_id=response_id, rate=rate, seq=self.seq, t=t).to_frames())
        return t

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class FakeCapture:
    """Capture's state socket, as an XPUB: its "someone speaks" is what makes playback barge in."""

    def __init__(self, rundir: Path) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.bind(endpoint("capture", Channel.STATE, rundir))

    def wait_for_subscriber(self, timeout: float = 15.0) -> None:
        wanted = b"\x01" + topic_of(SpeechActivity)
        wait_until(lambda: self.sock.poll(100) and self.sock.recv() == wanted, timeout,
                   what="playback listening for speech")  # fmt: skip

    def someone_speaks(self, over_answer: bool = True, t: int | None = None) -> None:
        """Speech capture heard begin (at ``t``, by default now) over an answer, or before it knew of one."""
        msg = SpeechActivity(speaking=True, over_answer=over_answer, t=t or time.monotonic_ns())
        self.sock.send_multipart(msg.to_frames())

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


class StateTap:
    """Playback's state socket: PlaybackState and Heartbeat, collected by a thread."""

    def __init__(self, rundir: Path) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.SUB)
        for cls in (PlaybackState, Heartbeat):
            self.sock.setsockopt(zmq.SUBSCRIBE, topic_of(cls))
        self.sock.connect(endpoint("playback", Channel.STATE, rundir))
        self.states: list[PlaybackState] = []
        self.heartbeats: list[Heartbeat] = []

    def pump(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if self.sock.poll(int(left * 1000)):
                msg = Message.from_frames(self.sock.recv_multipart())
                if isinstance(msg, PlaybackState):
                    self.states.append(msg)
                elif isinstance(msg, Heartbeat):
                    self.heartbeats.append(msg)

    def until(self, pred: Callable[[], object], timeout: float = 10.0, what: str = "") -> None:
        deadline = time.monotonic() + timeout
        while not pred():
            assert time.monotonic() < deadline, f"timed out waiting for {what}; states={self.states}"
            self.pump(0.05)

    def close(self) -> None:
        self.sock.close(0)
        self.ctx.term()


def playback_ready(notify: NotifySocket) -> str:
    return str(wait_until(lambda: next((m for m in notify.messages if "READY=1" in m), None), 15, what="READY=1"))


@contextlib.contextmanager
def listening(notify: NotifySocket, rundir: Path, session: FakeSession, capture: FakeCapture) -> Iterator[StateTap]:
    """A playback just started: ready, its first heartbeat heard, both stand-ins' subscriptions in;
    its states tapped until the block ends."""
    playback_ready(notify)
    tap = StateTap(rundir)
    try:
        tap.until(lambda: tap.heartbeats, 5, "playback's heartbeat")
        session.wait_for_subscriber()
        capture.wait_for_subscriber()
        yield tap
    finally:
        tap.close()


def stop_playback(proc: subprocess.Popen[bytes], rundir: Path) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(10)
    except subprocess.TimeoutExpired:
        code = None
    assert code == 0, (rundir / "playback.log").read_text()


def speech_like(seconds: float, seed: int) -> bytes:
    samples = np.random.default_rng(seed).integers(-20000, 20000, int(24000 * seconds))
    return samples.astype("<i2").tobytes()
