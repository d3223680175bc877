"""The simulator answering in a recorded voice (``--voice``), as the echo tests need."""

from __future__ import annotations

import base64
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest

from services.simulator import Simulator
from tests.helpers import REPO, free_port, tolk_cmd
from tests.services.simulator_client import open_client, silence, speech


async def test_answers_speak_a_given_voice() -> None:
    """With a recorded voice, each answer is a stretch of it (broadband, as the box's real voice
    is) as long as what was said, the next answer from further on in it; fades only at the ends."""
    voice = np.random.default_rng(7).integers(-8000, 8000, 24000 * 4).astype("<i2")
    async with Simulator(pace_s=0.002, voice=voice.tobytes()) as simulator:
        client = await open_client(simulator)
        await client.configure()
        answers = []
        for _ in range(2):
            await client.append(speech(1.2) + silence(0.8))
            events = await client.until("response.done")
            pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
            answers.append(np.frombuffer(pcm, "<i2"))
        await client.ws.close()
    first, second = answers
    n, fade = len(first), 240  # 10 ms fades at 24 kHz
    assert n / 24000 == pytest.approx(1.2, abs=0.05) and len(second) == n
    assert np.array_equal(first[fade:-fade], voice[fade : n - fade])
    assert np.array_equal(second[fade:-fade], voice[n + fade : 2 * n - fade])
    assert np.abs(first[:fade].astype(np.int32)).max() < np.abs(voice[:fade].astype(np.int32)).max()


def test_cli_refuses_a_voice_it_cannot_speak(tmp_path: Path) -> None:
    """A voice at the wrong rate is refused before listening, with the conversion to run."""
    wrong = tmp_path / "voice16k.wav"
    with wave.open(str(wrong), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(speech(0.5))
    done = subprocess.run(
        tolk_cmd("simulator", "--port", str(free_port()), "--voice", str(wrong)),
        cwd=REPO, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "16000 Hz, 1 channel(s), 16-bit; answers are 24000 Hz mono 16-bit" in done.stderr
    assert "sox" in done.stderr and "listening" not in done.stderr
