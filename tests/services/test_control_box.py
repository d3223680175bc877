"""Control with the box's other processes: the devices alsa-lib really lists, and the speaker
test going from the HTTP API over the bus to a real playback process and its ALSA device."""

from __future__ import annotations

import time
from pathlib import Path

import httpx

from services.playback.service import speaker_test_tone
from tests.helpers import NotifySocket, alsa_home, free_port, running, service_env, tolk_cmd, wait_until


def test_devices_and_the_speaker_test(rundir: Path, notify: NotifySocket) -> None:
    speaker = rundir / "speaker.raw"
    home = alsa_home(
        rundir,
        f'pcm.test_spk {{\n type file\n slave.pcm null\n file "{speaker}"\n format raw\n'
        f' hint {{ show on description "tolk test speaker" }}\n}}\n',
    )
    port = free_port()
    cfg = rundir / "tolk.toml"
    cfg.write_text(
        f'[audio]\nplayback_device = "test_spk"\nplayback_start_ms = 0\n[control]\nlisten = "127.0.0.1:{port}"\n'
    )
    url = f"http://127.0.0.1:{port}"
    env = service_env(rundir, HOME=str(home), NOTIFY_SOCKET=notify.path)
    with (
        running(tolk_cmd("service", "control", "--config", str(cfg)), env, rundir / "control.log"),
        running(tolk_cmd("service", "playback", "--config", str(cfg)), env, rundir / "playback.log"),
    ):
        wait_until(lambda: _status(url, "playback").startswith("idle, test_spk open"), 15, what="playback idle")

        devices = httpx.get(f"{url}/api/devices", timeout=5).json()
        assert devices["playback"][0] == "default" and "test_spk" in devices["playback"]
        assert devices["configured"]["playback_device"] == "test_spk"
        assert devices["problems"] == []
        assert all(c["source"].startswith("v4l2:/dev/video") for c in devices["cameras"])

        # Playback subscribes to control's commands on its own schedule (ZeroMQ's slow joiner):
        # press again until the first tone plays, as a person would.
        deadline = time.monotonic() + 15
        while not (speaker.exists() and speaker.stat().st_size):
            assert time.monotonic() < deadline, (rundir / "playback.log").read_text()
            assert httpx.post(f"{url}/api/speaker-test", timeout=5).status_code == 202
            time.sleep(0.5)
        tone = speaker_test_tone()
        wait_until(lambda: speaker.stat().st_size % len(tone) == 0, 5, what="whole tones")
        played = speaker.read_bytes()
        assert played == tone * (len(played) // len(tone))
        wait_until(lambda: _counter(url, "playback", "speaker_tests") >= 1, 5, what="the count")
    assert "speaker test: 0.6 s tone at 660 Hz" in (rundir / "playback.log").read_text()


def _status(url: str, name: str) -> str:
    try:
        return str(httpx.get(f"{url}/api/status", timeout=2).json()["processes"][name]["status"])
    except httpx.TransportError:
        return ""


def _counter(url: str, name: str, counter: str) -> float:
    return float(httpx.get(f"{url}/api/status", timeout=2).json()["processes"][name]["counters"].get(counter, 0))
