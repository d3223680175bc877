"""``tolk service session`` as a real process, against the simulator over real WebSockets.

Audio comes in on a real ZeroMQ ``capture`` bus; what the session publishes is read from its
real ipc sockets. PUB/SUB drops what is sent before a subscriber connects (slow joiner), so the
feeders keep sending until the simulator has seen audio, and the readers wait for heartbeats.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zmq

from daemon.bus import Bus, endpoint
from daemon.messages import (
    AudioIn,
    AudioOut,
    Caption,
    Channel,
    Command,
    Heartbeat,
    Message,
    SessionStatus,
    Usage,
)
from services.simulator import Faults, Simulator, running_in_thread
from tests.helpers import NotifySocket, espeak_wav, running, service_env, tolk_cmd, wait_until, wav_pcm

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
                raise AssertionError(
                    f"no {what or 'matching message'} within {timeout}s; last: {self.seen[-3:]}"
                )
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
def session_process(
    rundir: Path, config: Path, **env: str
) -> Iterator[tuple[subprocess.Popen[bytes], SessionTap]]:
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


def test_translates_speech_end_to_end_and_finishes_on_sigterm(
    rundir: Path, capture: Bus, tmp_path: Path
) -> None:
    words = espeak_wav("ni hao, this is the kiosk speaking", tmp_path / "speech.wav")
    speech = wav_pcm(words)
    speech = speech[: len(speech) - len(speech) % PERIOD]
    with running_in_thread(api_key=KEY) as sim:
        config = write_config(rundir / "tolk.toml", sim.url)
        with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (proc, tap):
            feed_until(capture, sim, lambda: sim.appends > 0)
            fed = speech + bytes(PERIOD * 50)  # the utterance, then 1 s of silence
            publish(capture, fed)
            feed_until(capture, sim, lambda: fed in bytes(sim.audio_in))

            out = tap.wait_for(lambda m: isinstance(m, AudioOut), what="AudioOut")
            assert isinstance(out, AudioOut) and out.rate == 24000 and out.response_id.startswith("resp_")
            final = tap.wait_for(
                lambda m: isinstance(m, Caption) and m.kind == "translation" and m.final,
                what="final translation",
            )
            assert isinstance(final, Caption)
            assert final.text.startswith("[simulated] utterance 1:") and final.text.endswith("zh → en")
            assert final.language == "en"
            source = tap.wait_for(lambda m: isinstance(m, Caption) and m.kind == "source" and m.final)
            assert (
                isinstance(source, Caption)
                and source.language == "zh"
                and source.utterance == final.utterance
            )
            partials = [
                c for c in tap.of(Caption) if c.kind == "translation" and c.utterance == final.utterance
            ]
            assert [c.final for c in partials] == [False] * (len(partials) - 1) + [True]
            assert partials[-2].text + " " + partials[-2].stash == final.text  # snapshots replace, not append
            usage = tap.wait_for(lambda m: isinstance(m, Usage) and m.input_tokens > 0, what="Usage")
            assert isinstance(usage, Usage) and usage.input_audio_tokens > 0 and usage.output_audio_tokens > 0
            pcm_out = b"".join(m.pcm for m in tap.of(AudioOut) if m.response_id == out.response_id)
            assert 0.5 <= len(pcm_out) / 48000 <= 1.0  # the simulator's reply: a 0.5-1 s tone at 24 kHz

            # A language change goes to the live session as a new session.update, no reconnect.
            write_config(config, sim.url, target="ja")
            proc.send_signal(signal.SIGHUP)
            wait_until(lambda: len(sim.events_of("session.update")) == 2, what="second session.update")
            assert sim.events_of("session.update")[1]["session"]["translation"] == {"language": "ja"}
            assert len(sim.connections) == 1

            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0

    assert sim.violations == []
    update = sim.events_of("session.update")[0]["session"]
    assert update == {
        "modalities": ["text", "audio"],
        "voice": "Cherry",
        "input_audio_format": "pcm16",
        "output_audio_format": "pcm24",
        "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "zh"},
        "translation": {"language": "en"},
    }
    assert sim.events[0]["type"] == "session.update"
    assert sim.events[-1]["type"] == "session.finish"
    assert sim.connections[0].finished
    assert sim.connections[0].authorization == f"Bearer {KEY}"
    assert all(e["audio"] == 3200 for e in sim.events_of("input_audio_buffer.append")[:-1])
    log = (rundir / "log").read_text()
    assert KEY not in log, "the API key reached the log"
    assert "stopped (exit 0)" in log


def test_refused_key_fails_once_and_does_not_retry(rundir: Path, notify: NotifySocket) -> None:
    with running_in_thread(api_key="the-right-key") as sim:
        config = write_config(rundir / "tolk.toml", sim.url)
        with session_process(rundir, config, DASHSCOPE_API_KEY=KEY, NOTIFY_SOCKET=notify.path) as (proc, tap):
            notify.wait_for("READY=1")
            status = tap.wait_for(
                lambda m: isinstance(m, SessionStatus) and m.state == "failed", what="failed"
            )
            assert isinstance(status, SessionStatus) and "HTTP 401" in status.last_error
            tap.pump(2.5)
            assert sim.attempts == 1
            assert tap.status_line().startswith("failed: the service refused the API key")
            assert proc.poll() is None
    assert KEY not in (rundir / "log").read_text()


def test_configuration_error_is_reported_without_crash_looping(rundir: Path) -> None:
    faults = Faults(reject_update="Invalid modalities: ['audio'].", reject_code="invalid_value")
    with running_in_thread(faults=faults) as sim:
        config = write_config(rundir / "tolk.toml", sim.url)
        with session_process(rundir, config) as (proc, tap):
            status = tap.wait_for(
                lambda m: isinstance(m, SessionStatus) and m.state == "failed", what="failed"
            )
            assert isinstance(status, SessionStatus)
            assert "Invalid modalities: ['audio']." in status.last_error
            tap.pump(2.0)
            assert sim.attempts == 1 and proc.poll() is None
            assert "refused the configuration" in tap.status_line()
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    assert sim.violations == []


def test_throttled_handshake_backs_off(rundir: Path) -> None:
    with running_in_thread(faults=Faults(refuse_status=429)) as sim:
        config = write_config(rundir / "tolk.toml", sim.url)
        with session_process(rundir, config) as (proc, tap):
            status = tap.wait_for(
                lambda m: isinstance(m, SessionStatus) and m.state == "backoff", what="backoff"
            )
            assert isinstance(status, SessionStatus) and "HTTP 429" in status.detail
            tap.pump(2.0)
            assert sim.attempts == 1  # throttling waits at least 5 s: no storm against the account
            assert proc.poll() is None


def test_lost_connection_reconnects_and_keeps_audio_in_order(rundir: Path, capture: Bus) -> None:
    faults = Faults(close_after_audio_s=1.0, close_after_audio_times=2, malformed=True, bursty=True)
    with running_in_thread(faults=faults) as sim:
        config = write_config(rundir / "tolk.toml", sim.url)
        with session_process(rundir, config) as (proc, tap):
            feed_until(capture, sim, lambda: len(sim.connections) >= 3, timeout=20)
            reconnected = tap.wait_for(lambda m: isinstance(m, SessionStatus) and m.reconnects >= 2)
            assert isinstance(reconnected, SessionStatus)
            # A recognizable ramp: every sample distinct, so order and gaps show.
            ramp = (np.arange(16000, dtype="<i2") * 3).tobytes()
            publish(capture, ramp, speedup=8)
            feed_until(capture, sim, lambda: ramp in bytes(sim.audio_in), timeout=20)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    assert sim.violations == []
    assert all(c.events > 0 for c in sim.connections)


def test_missing_key_with_a_cloud_url_fails_at_once_but_is_ready(rundir: Path, notify: NotifySocket) -> None:
    # backend "cloud" named: with "auto" and no key the box would use its local engine instead.
    url = "wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime"
    config = write_config(rundir / "tolk.toml", url, service='backend = "cloud"')
    env = {k: v for k, v in os.environ.items() if k != "DASHSCOPE_API_KEY"}
    assert "DASHSCOPE_API_KEY" not in env
    with session_process(rundir, config, NOTIFY_SOCKET=notify.path) as (proc, tap):
        notify.wait_for("READY=1")
        status = tap.wait_for(lambda m: isinstance(m, SessionStatus) and m.state == "failed", what="failed")
        assert isinstance(status, SessionStatus)
        assert status.detail == "no API key: set DASHSCOPE_API_KEY or [service] api_key_file"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0


def test_restart_command_finishes_the_session_and_reconnects(rundir: Path, capture: Bus) -> None:
    control = Bus("control", rundir)
    try:
        with running_in_thread() as sim:
            config = write_config(rundir / "tolk.toml", sim.url)
            with session_process(rundir, config) as (proc, tap):
                feed_until(capture, sim, lambda: sim.appends > 0)
                control.publish(Command(name="restart-session"))
                feed_until(capture, sim, lambda: len(sim.connections) == 2 and sim.connections[1].appends > 0)
                assert sim.connections[0].finished  # session.finish, then session.finished, then closed
                status = tap.wait_for(
                    lambda m: isinstance(m, SessionStatus) and m.reconnects == 1 and m.state == "live"
                )
                assert isinstance(status, SessionStatus)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
        assert sim.violations == []
        assert [c.finished for c in sim.connections] == [True, True]
    finally:
        control.close()
