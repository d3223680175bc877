"""``tolk service session`` as a real process, against the simulator over real WebSockets.

Audio comes in on a real ZeroMQ ``capture`` bus; what the session publishes is read from its
real ipc sockets. PUB/SUB drops what is sent before a subscriber connects (slow joiner), so the
feeders keep sending until the simulator has seen audio, and the readers wait for heartbeats.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np

from daemon.bus import Bus
from daemon.messages import (
    AudioOut,
    Caption,
    Command,
    SessionStatus,
    Usage,
)
from services.simulator import Faults, running_in_thread
from tests.helpers import NotifySocket, espeak_wav, wait_until, wav_pcm
from tests.services.session_rig import KEY, PERIOD, feed_until, publish, session_process, write_config
from tests.services.session_rig import capture as capture  # the fixture


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
            assert partials[-2].text + partials[-2].stash == final.text  # snapshots replace, not append
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
        assert status.detail.startswith("no API key: enter it on the admin page, or set DASHSCOPE_API_KEY")
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
