"""Conversation mode through the whole box: `tolk run` with a real-clock microphone, the
simulator reporting the language it heard (its marker convention), both directions out."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from daemon.messages import Caption, SessionStatus
from tests.dialogue import alternating, make_turns
from tests.helpers import PulseMic, alsa_home, free_port, running, service_env, tolk_cmd, wait_until
from tests.services.session_rig import SessionTap

OTHER = {"zh": "en", "en": "zh"}
PERIOD = 640




def _speak(mic: PulseMic, pcm: bytes, stop: threading.Event) -> None:
    """Real-time pacing is ours to do (the pipe-source does not hold the writer to its clock)."""
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), PERIOD)):
        if stop.is_set():
            return
        mic.write(pcm[i : i + PERIOD])
        if (wait := start + (n + 1) * 0.02 - time.monotonic()) > 0:
            time.sleep(wait)


def test_a_dialogue_through_the_whole_box(rundir: Path, mic: PulseMic, tmp_path: Path) -> None:
    spoken = alternating(20, repeats=(4, 13))
    turns = make_turns(tmp_path, spoken)
    # 2.5 s: the next person waits for the box to finish speaking, as people at a counter do
    # (half duplex: the microphone is muted while the box speaks).
    pause = bytes(PERIOD * 125)
    dialogue = b"".join(pause + t.pcm for t in turns) + pause
    speaker = rundir / "speaker.raw"
    home = alsa_home(
        rundir,
        mic.asoundrc("test_mic")
        + f'pcm.test_spk {{\n type file\n slave.pcm null\n file "{speaker}"\n format raw\n}}\n',
    )
    sim_port, http_port = free_port(), free_port()
    config = rundir / "tolk.toml"
    config.write_text(
        f"""
[languages]
source = "zh"
target = "en"
mode = "conversation"
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
    tap = SessionTap(rundir)
    stop = threading.Event()
    try:
        with (
            running(tolk_cmd("simulator", "--port", str(sim_port)), env, rundir / "sim.log"),
            running([*tolk_cmd("run", "--config", str(config), "--no-restart")], env, rundir / "run.log"),
        ):
            tap.wait_for(lambda m: isinstance(m, SessionStatus) and m.state == "live", 40, "a live session")
            feeder = threading.Thread(target=_speak, args=(mic, dialogue, stop), name="mic-feeder", daemon=True)
            feeder.start()

            def finals() -> list[Caption]:
                tap.pump(0.1)
                return [m for m in tap.of(Caption) if m.kind == "translation" and m.final]

            try:
                wait_until(lambda: len(finals()) >= len(turns), 150, 0.0, "a translation per turn")
                feeder.join(10)
                tap.pump(1.5)  # nothing more may come
            except AssertionError:
                print([(c.language, c.text) for c in finals()])
                print((rundir / "run.log").read_text()[-6000:])
                raise
            translations = finals()
    finally:
        stop.set()
        tap.close()
    assert len(translations) == len(turns), [c.text for c in translations]
    for language, caption in zip(spoken, translations, strict=True):
        assert caption.language == OTHER[language] and caption.text.endswith(f"{language} → {OTHER[language]}")
