"""Nothing said is lost to the faults a kiosk meets: the whole box (`tolk run`, restarting what
dies) against a service that drops every connection after 7 s, with the session killed once
mid-sentence (SIGKILL: nothing it held in memory survives).

28 s of real speech (espeak-ng, a two-voice dialogue) go into a microphone with a real clock
(a PulseAudio null sink's monitor, through alsa-lib's pulse plugin). Every loud 20 ms frame must reach the service:
what capture published survives the session's crash in capture's ring, what a dropped connection
took along is sent again on the next. And none twice: no connection hears a frame twice, and a
frame heard on two connections lies in the part of the first that the service never answered.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import httpx

from services.session.pause import is_loud
from services.simulator import Faults, running_in_thread
from services.simulator.server import ConnectionLog
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

FRAME = 640  # 20 ms of 16 kHz S16_LE
LINES = [
    ("en", "Good morning, where can I buy a ticket for the museum?"),
    ("en-us", "Tickets are sold at the desk on your left, next to the stairs."),
    ("en", "How much is it for two adults and one child?"),
    ("en-us", "That is thirty euros, and the child goes in for free today."),
    ("en", "Wonderful. Is the new exhibition already open?"),
    ("en-us", "It opens at nine tomorrow morning and closes at six."),
    ("en", "Thank you very much, have a nice day."),
]
PAUSE_S = 0.9


def _dialogue(rundir: Path) -> tuple[bytes, list[tuple[int, int]]]:
    """The dialogue's audio and where each line lies in it (bytes), at least 28 s long."""
    pcm, spans = bytearray(bytes(int(16000 * 0.5) * 2)), []
    for n, (voice, text) in enumerate(LINES):
        line = wav_pcm(espeak_wav(text, rundir / f"line{n}.wav", voice=voice))
        line = line[: len(line) - len(line) % 2]
        spans.append((len(pcm), len(pcm) + len(line)))
        pcm += line + bytes(int(16000 * PAUSE_S) * 2)
    pcm += bytes(16000 * 2 * 2)  # 2 s of quiet: the last line ends
    assert len(pcm) / 32000 >= 28, len(pcm) / 32000
    return bytes(pcm), spans


def _status(port: int) -> dict[str, Any] | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2).json()  # type: ignore[no-any-return]
    except (httpx.HTTPError, ValueError):
        return None


def _session_pid(port: int) -> int:
    status = _status(port)
    proc = (status or {}).get("processes", {}).get("session", {})
    return int(proc.get("pid") or 0) if proc.get("state") in ("ready", "running") else 0


def _warnings(log: Path) -> str:
    """What the box logged that explains lost audio, for a failure's message."""
    lines = log.read_text(errors="replace").splitlines()
    return "\n".join(line for line in lines if " WARNING " in line or " ERROR " in line or "clock" in line)[-4000:]


def _answered_through(conn: ConnectionLog) -> int:
    """How far into the connection's audio the service finished answering: an append made before
    the service heard utterance k end belongs to utterances 1..k, and k replies done answer those.
    (Not "before reply k began": a reply can begin after the next line's onset came in.) Audio
    after the last answered utterance went down with the connection, and is rightly sent again."""
    done = conn.sent.count("response.done")
    through = 0
    for mark in conn.marks:
        if mark.utterances_before < done:
            through = mark.offset + mark.size
    return through


def test_a_dialogue_survives_dropped_connections_and_a_killed_session(rundir: Path, mic: PulseMic) -> None:
    dialogue, spans = _dialogue(rundir)
    loud = [
        dialogue[i : i + FRAME] for i in range(0, len(dialogue) - FRAME + 1, FRAME) if is_loud(dialogue[i : i + FRAME])
    ]
    assert len(loud) > 500
    # The room's monitor: a microphone with a clock (a pipe-source has none, and capture rightly
    # treats what such a device hands out at once as a backlog to drop).
    home = alsa_home(rundir, mic.asoundrc("test_mic", mic.add_room()))
    http_port = free_port()
    with running_in_thread(faults=Faults.parse("drop_after=7")) as sim:
        config = rundir / "tolk.toml"
        config.write_text(
            f"""
[languages]
source = "en"
target = "de"
[output]
modalities = ["text"]
[service]
url = "{sim.url}"
backlog_s = 15
[audio]
capture_device = "test_mic"
[control]
listen = "127.0.0.1:{http_port}"
"""
        )
        env = service_env(rundir, HOME=str(home))
        with running(tolk_cmd("run", "--config", str(config)), env, rundir / "run.log"):
            first = wait_until(lambda: _session_pid(http_port), 40, 0.2, "the session running")
            wait_until(lambda: ((_status(http_port) or {}).get("session") or {}).get("state") == "live", 20, 0.2,
                       "the session live")  # fmt: skip
            feeder = threading.Thread(target=mic.speak, args=(dialogue,), name="mic", daemon=True)
            feeder.start()
            # Kill the session a second into the fourth line, as that line reaches the service.
            start = spans[3][0] + 16000
            heard = dialogue[start : start + 2 * FRAME]
            try:
                wait_until(lambda: heard in bytes(sim.audio_in), 40, 0.05, "the fourth line reaching the service")
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{_warnings(rundir / 'run.log')}") from None
            os.kill(first, signal.SIGKILL)
            wait_until(lambda: _session_pid(http_port) not in (0, first), 30, 0.2, "the session restarted")
            feeder.join(60)
            last = dialogue[spans[-1][1] - 2 * FRAME : spans[-1][1]]
            wait_until(lambda: any(last in bytes(c.audio) for c in sim.connections), 30, 0.2, "the last line")
            wait_until(lambda: len(sim.connections) >= 4, 5, 0.2, "drops every 7 s")
        conns = list(sim.connections)
    streams = [bytes(c.audio) for c in conns]
    missing = [f for f in loud if not any(f in s for s in streams)]
    at = [round(dialogue.find(f) / 32000, 2) for f in missing]
    assert len(missing) <= 0.01 * len(loud), (
        f"{len(missing)} of {len(loud)} loud frames never arrived, at {at} s\n{_warnings(rundir / 'run.log')}"
    )
    twice_in_one = [round(dialogue.find(f) / 32000, 2) for f in loud if any(s.count(f) > 1 for s in streams)]
    assert not twice_in_one, f"{len(twice_in_one)} loud frames were sent twice on one connection, at {twice_in_one} s"
    for n, (conn, stream) in enumerate(zip(conns, streams, strict=True)):
        answered = stream[: _answered_through(conn)]
        again = [f for f in loud if f in answered and any(f in later for later in streams[n + 1 :])]
        assert not again, f"{len(again)} frames the service answered on connection {n + 1} were sent again"
    assert "capture replayed" in (rundir / "run.log").read_text()  # the restarted session got it back
    assert sim.violations == []
