"""The whole box (`tolk run`) on each LiveTranslate model, against the simulator in that profile.

Per model: the ``session.update`` the box sends is that model's shape, field by field (flat
for qwen3 and qwen3.5, nested for qwen3.8); captions assemble as the model sends them (qwen3.8
appends pieces: every partial is the start of the final, never a piece alone or a piece twice);
speech plays at the rate ``session.updated`` names (qwen3.8's simulator says 16 kHz, the speaker
still plays the answer's tone at its pitch); usage counts at the model's rate (7 audio tokens a
second in on 3.5 and 3.8, 12.5 on qwen3).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

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

ASR = "qwen3-asr-flash-realtime"
NESTED_INPUT = {
    "format": {"type": "pcm", "sample_rate": 16000},
    "turn_detection": {"type": "speaker_detection", "threshold": 0.5},
}
#: model, [languages], the session.update expected, audio tokens per second in, output rate.
CASES = [
    (
        "qwen3-livetranslate-flash-realtime",
        ("en", "zh"),
        {
            "modalities": ["text", "audio"],
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm24",
            "voice": "Cherry",
            "translation": {"language": "zh"},
            "input_audio_transcription": {"model": ASR, "language": "en"},
        },
        12.5,
        24000,
    ),
    (
        "qwen3.5-livetranslate-flash-realtime",
        ("auto", "nl"),
        {
            "modalities": ["text", "audio"],
            "input_audio_format": "pcm",
            "output_audio_format": "pcm",
            "voice": "Tina",
            "translation": {"language": "nl"},
            "input_audio_transcription": {"model": ASR},
        },
        7.0,
        24000,
    ),
    (
        "qwen3.8-livetranslate-flash-realtime",
        ("auto", "nl"),
        {"output_modalities": ["text", "audio"], "audio": {"input": NESTED_INPUT}, "translation": {"language": "nl"}},
        7.0,
        16000,
    ),
]
#: The simulator's answer to the first utterance is a tone at this pitch (services/simulator/speech.py).
FIRST_TONE_HZ = 330.0


class CaptionStream(threading.Thread):
    """Every message of the captions WebSocket (the screen's own stream), as it came."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True, name="captions")
        self.messages: list[dict[str, Any]] = []
        # Entered as a context manager, as websockets asks of a connection that is iterated.
        self._open = contextlib.ExitStack()
        self._ws = self._open.enter_context(connect(f"ws://127.0.0.1:{port}/api/captions", open_timeout=10))
        self.start()

    def run(self) -> None:
        try:
            for raw in self._ws:
                self.messages.append(json.loads(raw))
        except ConnectionClosed:
            pass

    def of(self, utterance: str, kind: str) -> list[dict[str, Any]]:
        captions = [m["caption"] for m in self.messages if m.get("type") == "caption"]
        return [c[kind] for c in captions if c.get("utterance") == utterance and c.get(kind)]

    def close(self) -> None:
        self._open.close()
        self.join(5)


def _status(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/api/status", timeout=2)
    except httpx.HTTPError:
        return None
    return response.json() if response.status_code == 200 else None


def _final(status: dict[str, Any] | None) -> dict[str, Any] | None:
    for caption in (status or {}).get("captions", []):
        if (caption.get("translation") or {}).get("final"):
            return dict(caption)
    return None


def _assembled(partials: list[dict[str, Any]], final: str) -> None:
    """Each partial the start of the final and longer than the one before: appended, not replaced."""
    texts = [p["text"] for p in partials if not p["final"]]
    assert len(texts) >= 2, partials
    assert all(final.startswith(t) for t in texts), (texts, final)
    assert all(len(a) < len(b) for a, b in itertools.pairwise(texts)), texts
    assert final.count("[simulated]") == 1, final


def _pitch(pcm: bytes, rate: int = 24000) -> float:
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    loud = samples[np.abs(samples) > 0]
    spectrum = np.abs(np.fft.rfft(loud * np.hanning(len(loud))))
    return float(np.argmax(spectrum) * rate / len(loud))


@pytest.mark.parametrize(("model", "sides", "expected", "tokens_per_s", "output_rate"), CASES, ids=[c[0] for c in CASES])  # noqa: E501
def test_the_box_speaks_each_models_protocol(
    rundir: Path,
    mic: PulseMic,
    model: str,
    sides: tuple[str, str],
    expected: dict[str, Any],
    tokens_per_s: float,
    output_rate: int,
) -> None:
    speech = wav_pcm(espeak_wav("The exhibition opens at nine tomorrow morning.", rundir / "speech.wav"))
    speaker = rundir / "speaker.raw"
    home = alsa_home(
        rundir,
        mic.asoundrc("test_mic", mic.add_room())
        + f'pcm.test_spk {{\n type file\n slave.pcm null\n file "{speaker}"\n format raw\n}}\n',
    )
    sim_port, http_port = free_port(), free_port()
    record = rundir / "sim.jsonl"
    config = rundir / "tolk.toml"
    config.write_text(
        f'[languages]\nsource = "{sides[0]}"\ntarget = "{sides[1]}"\n'
        f'[service]\nmodel = "{model}"\nurl = "ws://127.0.0.1:{sim_port}/api-ws/v1/realtime"\n'
        f'[audio]\ncapture_device = "test_mic"\nplayback_device = "test_spk"\n'
        f'[camera]\nsource = "none"\n[control]\nlisten = "127.0.0.1:{http_port}"\n'
    )
    env = service_env(rundir, HOME=str(home))
    sim_cmd = tolk_cmd("simulator", "--port", str(sim_port), "--record", str(record), "--output-rate", str(output_rate))
    sim_log = rundir / "sim.log"
    with (
        running(sim_cmd, env, sim_log),
        running([*tolk_cmd("run", "--config", str(config), "--no-restart")], env, rundir / "run.log") as box,
    ):
        wait_until(lambda: (s := _status(http_port)) and s["session"]["state"] == "live", 40, 0.2, "a live session")
        captions = CaptionStream(http_port)
        try:
            feeder = threading.Thread(target=mic.speak, args=(bytes(9600) + speech + bytes(48000),), daemon=True)
            feeder.start()
            try:
                caption = wait_until(lambda: _final(_status(http_port)), 30, 0.2, "a final translation")
            except AssertionError:
                print((rundir / "run.log").read_text()[-6000:], sim_log.read_text()[-3000:])
                raise
            translation = caption["translation"]
            assert translation["language"] == sides[1]
            assert translation["text"].startswith("[simulated] utterance 1:"), translation
            _assembled(captions.of(caption["utterance"], "translation"), translation["text"])
            source = wait_until(lambda: (_final(_status(http_port)) or {}).get("source"), 10, 0.2, "the source text")
            assert source["final"] and source["text"].startswith("[simulated] speech 1 in en")
            _assembled(captions.of(caption["utterance"], "source"), source["text"])

            # Usage at the model's rate: the tokens of the audio heard, against the audio sent by then.
            usage = wait_until(lambda: (_status(http_port) or {}).get("usage"), 10, 0.2, "usage")
            rate = usage["input_audio_tokens"] / usage["audio_seconds_sent"]
            assert 0.75 * tokens_per_s <= rate <= 1.02 * tokens_per_s, usage

            # The answer's tone, at its pitch: at 16 kHz taken for 24 kHz it would sound 1.5x higher.
            played = wait_until(lambda: speaker.exists() and speaker.stat().st_size > 24000 and speaker.read_bytes())
            assert abs(_pitch(played) - FIRST_TONE_HZ) < 15, _pitch(played)
            feeder.join(15)  # the microphone has said all of it before the box stops
        finally:
            captions.close()
        box.send_signal(signal.SIGTERM)
        assert box.wait(30) == 0

    events = [json.loads(line) for line in record.read_text().splitlines() if line.strip()]
    updates = [e["session"] for e in events if e.get("type") == "session.update"]
    assert updates == [expected], updates
    assert [e.get("type") for e in events][-1] == "session.finish"
    assert "0 client violations" in sim_log.read_text(), sim_log.read_text()[-3000:]
