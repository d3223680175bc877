"""The camera process: off by default, honest about sources this build cannot sample."""

from __future__ import annotations

import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq

from daemon.bus import endpoint
from daemon.messages import Channel, Heartbeat, Message, VideoFrame, topic_of
from tests.helpers import NotifySocket, running, service_env, tolk_cmd, wait_until


@pytest.fixture
def sd(notify: NotifySocket) -> Iterator[NotifySocket]:
    """The notify socket, read all the time as systemd does (an unread one blocks the sender)."""
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            notify.drain(0.05)

    thread = threading.Thread(target=pump, name="notify-pump", daemon=True)
    thread.start()
    yield notify
    stop.set()
    thread.join(2)


def _heartbeat_status(sock: zmq.Socket, want: str, timeout: float = 10.0) -> Heartbeat:
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while (left := deadline - time.monotonic()) > 0:
        if sock.poll(int(left * 1000)):
            msg = Message.from_frames(sock.recv_multipart())
            assert not isinstance(msg, VideoFrame), "a frame was published with the camera off"
            if isinstance(msg, Heartbeat):
                seen.append(msg.status)
                if want in msg.status:
                    return msg
    raise AssertionError(f"no heartbeat saying {want!r}; saw {seen[-3:]}")


def test_camera_off_and_an_unsupported_source(rundir: Path, sd: NotifySocket) -> None:
    config = rundir / "tolk.toml"
    config.write_text('[camera]\nsource = "none"\n')
    env = service_env(rundir, NOTIFY_SOCKET=sd.path, WATCHDOG_USEC="2000000")
    ctx = zmq.Context()
    state = ctx.socket(zmq.SUB)
    bulk = ctx.socket(zmq.SUB)
    for sock, channel, cls in ((state, Channel.STATE, Heartbeat), (bulk, Channel.BULK, VideoFrame)):
        sock.setsockopt(zmq.SUBSCRIBE, topic_of(cls))
        sock.connect(endpoint("camera", channel, rundir))
    try:
        with running(tolk_cmd("service", "camera", "--config", str(config)), env, rundir / "camera.log") as proc:
            ready = wait_until(lambda: next((m for m in sd.messages if "READY=1" in m), None), 15, what="READY")
            assert "STATUS=camera off" in ready
            beat = _heartbeat_status(state, "camera off")
            assert beat.state == "ready" and beat.counters["frames_published"] == 0
            # Publishing nothing is its job: the watchdog is still petted.
            wait_until(lambda: any("WATCHDOG=1" in m for m in sd.messages), 3, what="WATCHDOG=1")

            config.write_text('[camera]\nsource = "picamera2"\n')
            proc.send_signal(signal.SIGHUP)
            _heartbeat_status(state, "camera source 'picamera2' is not supported by this build yet")
            assert proc.poll() is None
            assert not bulk.poll(0), "a frame was published"

            proc.send_signal(signal.SIGTERM)
            try:
                code = proc.wait(10)
            except subprocess.TimeoutExpired:
                code = None
            assert code == 0, (rundir / "camera.log").read_text()
    finally:
        state.close(0)
        bulk.close(0)
        ctx.term()
    log = (rundir / "camera.log").read_text()
    assert "camera source 'picamera2' is not supported by this build yet" in log
