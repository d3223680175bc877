"""The whole box, end to end: `tolk run` with real alsa-lib PCMs, the simulator as the service.

An espeak-ng utterance goes into a microphone with a real clock (PulseAudio pipe-source through
alsa-lib's pulse plugin); the simulator must receive every byte of it in order; its tone must
come out in the playback file; captions must reach /api/status; a killed process must show as
down; stopping must leave no process behind and send session.finish.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests.helpers import (
    PulseMic,
    alsa_home,
    espeak_wav,
    free_port,
    running,
    service_env,
    tolk_cmd,
    wait_until,
    wav_pcm,
)

#: What the test's config runs: no camera source, so no camera process (until one is set).
PROCESSES = ("capture", "session", "playback", "control")




def _status(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is not alive for our purpose, but its parent should have reaped it.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.split(")")[1].split()[0] != "Z"


def _all_up(status: dict[str, Any] | None) -> bool:
    if not status:
        return False
    procs = status["processes"]
    return all(procs.get(name, {}).get("state") in ("ready", "running") for name in PROCESSES) and (
        status["session"]["state"] == "live"
    )


def _final_translation(status: dict[str, Any] | None) -> str:
    for caption in (status or {}).get("captions", []):
        translation = caption.get("translation") or {}
        if translation.get("final") and translation.get("text"):
            return str(translation["text"])
    return ""


def test_speech_in_translation_out(rundir: Path, mic: PulseMic) -> None:
    speech = wav_pcm(espeak_wav("The exhibition opens at nine tomorrow morning.", rundir / "speech.wav"))
    speaker = rundir / "speaker.raw"
    home = alsa_home(
        rundir,
        mic.asoundrc("test_mic", mic.add_room())  # a microphone with a clock, as a kiosk has
        + f'pcm.test_spk {{\n type file\n slave.pcm null\n file "{speaker}"\n format raw\n}}\n',
    )
    sim_port, http_port = free_port(), free_port()
    record = rundir / "sim.jsonl"
    config = rundir / "tolk.toml"
    config.write_text(
        f"""
[languages]
source = "en"
target = "zh"
[service]
url = "ws://127.0.0.1:{sim_port}/api-ws/v1/realtime"
[audio]
capture_device = "test_mic"
playback_device = "test_spk"
[control]
listen = "127.0.0.1:{http_port}"
"""
    )
    env = service_env(rundir, HOME=str(home))
    sim_cmd = tolk_cmd("simulator", "--port", str(sim_port), "--record", str(record))
    with (
        running(sim_cmd, env, rundir / "sim.log"),
        running([*tolk_cmd("run", "--config", str(config), "--no-restart")], env, rundir / "run.log") as box,
    ):
        status = wait_until(lambda: (s := _status(http_port)) and _all_up(s) and s, 40, 0.2, "all processes up")
        pids = {name: status["processes"][name]["pid"] for name in PROCESSES}
        assert all(_alive(pid) for pid in pids.values())
        assert "camera" not in status["processes"] and "started camera" not in (rundir / "run.log").read_text()

        # Speak: 0.3 s of silence, the sentence, then 1.5 s of silence for end-of-speech.
        feeder = threading.Thread(
            target=mic.speak, args=(bytes(9600) + speech + bytes(48000),), name="mic-feeder", daemon=True
        )
        feeder.start()
        try:
            translation = wait_until(lambda: _final_translation(_status(http_port)), 30, 0.2, "a final translation")
        except AssertionError:
            print((rundir / "run.log").read_text()[-6000:], (rundir / "sim.log").read_text()[-3000:])
            print(json.dumps(_status(http_port), indent=1)[:4000])
            raise
        assert "simulated" in translation

        # Every byte of the utterance reached the service, contiguous and in order.
        received = wait_until(
            lambda: (data := Path(f"{record}.pcm").read_bytes()) and speech in data and data, 10, 0.2, "speech"
        )
        assert received.index(speech) % 2 == 0

        # The simulator's tone came out of the speaker.
        played = wait_until(lambda: speaker.exists() and speaker.stat().st_size > 4800 and speaker.read_bytes(), 10)
        samples = np.frombuffer(played, dtype="<i2").astype(np.float64)
        assert np.sqrt(np.mean(samples**2)) > 500, "the playback file holds no tone"

        # Captions of both sides are on /api/status.
        status = _status(http_port)
        assert status is not None
        assert any((c.get("source") or {}).get("text") for c in status["captions"]), status["captions"]

        # A camera set on the admin page: tolk run starts the camera process it did not need before.
        camera_on = {"camera": {"source": "v4l2:/dev/video7"}}  # missing: the process says so, and retries
        patched = httpx.patch(f"http://127.0.0.1:{http_port}/api/config", json=camera_on)
        assert patched.status_code == 200, patched.text
        camera = wait_until(lambda: ((_status(http_port) or {}).get("processes", {}).get("camera") or {}).get("pid"),
                            30, 0.2, "the camera process started")  # fmt: skip
        pids["camera"] = camera
        assert _alive(camera)

        # A process killed outright is reported down.
        os.kill(pids["capture"], signal.SIGKILL)
        down = wait_until(
            lambda: (s := _status(http_port)) and s["processes"]["capture"]["state"] == "down" and s, 10, 0.2
        )
        assert down["processes"]["session"]["state"] in ("ready", "running")
        health = httpx.get(f"http://127.0.0.1:{http_port}/health", timeout=2)
        assert health.status_code == 503 and "capture" in health.text

        box.send_signal(signal.SIGTERM)
        assert box.wait(30) == 0
        time.sleep(0.2)
        left = [name for name, pid in pids.items() if _alive(pid)]
        assert not left, f"processes left behind: {left}"

    events = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    types = [e.get("type") for e in events]
    assert types[0] == "session.update"
    assert types[-1] == "session.finish", types[-5:]
    update = events[0]["session"]
    assert update["translation"]["language"] == "zh"
    assert update["input_audio_transcription"]["language"] == "en"
    assert update["modalities"] == ["text", "audio"] and update["voice"] == "Cherry"


def test_a_process_that_cannot_start_fails_tolk_run(rundir: Path) -> None:
    config = rundir / "tolk.toml"
    busy = free_port()
    # The engine (no key: the local backend) on a port of its own, not the default another box may hold.
    config.write_text(
        f'[control]\nlisten = "127.0.0.1:{busy}"\n[audio]\ncapture_device = "null"\nplayback_device = "null"\n'
        f'[engine]\nlisten = "127.0.0.1:{free_port()}"\n'
    )
    import socket

    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", busy))
        blocker.listen()
        result = subprocess.run(
            tolk_cmd("run", "--config", str(config), "--no-restart"),
            env=service_env(rundir),
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    assert "control exited" in result.stderr
