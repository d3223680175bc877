"""The capture pipeline's voice detection while the box speaks through the canceller.

What a canceller leaks of the box's voice comes in bursts of a few tens of milliseconds: after a
pause in the answer, at a change of delay, while it adapts. While the box is audible, speech
must hold ``OVER_SPEAKER_START_MS`` before it counts (``daemon/vad.py``), or one such burst makes
the box stop its own answer. Here the canceller is exact (the room is the reference itself, so
what comes through is the talker alone), and a burst of a real voice as short as a leak plays the
part of the leak; the real VAD judges it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from daemon.messages import EchoState
from daemon.vad import SpeechDetector, make_vad
from services.capture.aec import ECHO_TAIL_MS, EchoCanceller
from services.capture.mute import MuteGate
from services.capture.pipeline import COUNTERS, CapturePipeline
from services.capture.policy import PolicySettings, StreamingPolicy
from services.capture.reference import RATE, RenderReference
from tests.helpers import espeak_wav, wav_pcm
from tests.services.aec_room import SessionSink

PERIOD = RATE // 50  # 20 ms
T0_NS = 1_000_000_000_000


class ExactCanceller:
    """The room is the reference itself, and this canceller removes exactly that, but for a
    residue ``residue_db`` under it (``None``: nothing left)."""

    def __init__(self, residue_db: float | None = None, onset_frames: int = 0) -> None:
        self.residue = 0.0 if residue_db is None else 10 ** (-residue_db / 20)
        self.onset_frames = onset_frames  # frames of the box's voice let through before it locks on

    def process(self, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
        if self.onset_frames and np.any(far):
            self.onset_frames -= 1
            return mic
        return (mic.astype(np.int32) - far + far * self.residue).astype(np.int16)


@pytest.fixture(scope="module")
def talker(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = espeak_wav("Excuse me, where is the exhibition?", tmp_path_factory.mktemp("echo") / "t.wav")
    samples = np.frombuffer(wav_pcm(Path(path)), dtype="<i2")
    return samples[int(np.argmax(np.abs(samples) > 300)) :]


def _speech_starts(talker: np.ndarray, box_s: float, said_at_s: float, said_ms: int) -> list[float]:
    """The box speaks for ``box_s`` from 1 s on (a hum, its echo quieter than the talker at the
    microphone); ``said_ms`` of the talker begin at ``said_at_s``. When the pipeline said speech
    started (s)."""
    return _run(talker, box_s, said_at_s, said_ms)[0]


def _run(
    talker: np.ndarray, box_s: float, said_at_s: float, said_ms: int, residue_db: float | None = None,
    onset_frames: int = 0,
) -> tuple[list[float], EchoState]:
    total = int(RATE * 4.0)
    box = np.zeros(total, dtype=np.int32)
    t = np.arange(int(RATE * box_s)) / RATE
    hum = 1500 * np.sin(2 * np.pi * 220 * t) * (1 + 0.5 * np.sin(2 * np.pi * 3 * t))
    box[RATE : RATE + len(t)] = hum.astype(np.int32)
    said = np.zeros(total, dtype=np.int32)
    part = talker[: RATE * said_ms // 1000]
    at = int(RATE * said_at_s)
    said[at : at + len(part)] = part
    counters = {k: 0.0 for k in COUNTERS}
    figures = EchoState()
    starts: list[float] = []
    pipeline = CapturePipeline(
        SessionSink(),  # type: ignore[arg-type]
        MuteGate(),
        SpeechDetector(make_vad("silero")),
        StreamingPolicy(PolicySettings(mode="always", period_ms=20)),
        counters,
        lambda speaking, t_ns, _over: starts.append((t_ns - T0_NS) / 1e9) if speaking else None,
    )
    reference = RenderReference(source_rate=RATE)
    reference.add(box[: 5 * PERIOD].astype("<i2").tobytes(), T0_NS, RATE)
    pipeline.echo = EchoCanceller(reference, figures, factory=lambda: ExactCanceller(residue_db, onset_frames))
    pipeline.echo._locked = True  # a canceller that has long found the room (no onset guard's limitless start)
    far = box.astype("<i2")
    mic = np.clip(box + said, -32768, 32767).astype("<i2")
    for k in range(total // PERIOD):
        # As playback does: each period of the reference goes out a little before it plays.
        ahead = k + 5
        reference.add(far[ahead * PERIOD : (ahead + 1) * PERIOD].tobytes(), T0_NS + ahead * 20_000_000, RATE)
        end_ns = T0_NS + (k + 1) * 20_000_000
        pipeline.period(mic[k * PERIOD : (k + 1) * PERIOD].tobytes(), end_ns, 20_000_000)
    return starts, figures


def test_a_burst_as_short_as_a_leak_is_not_speech_while_the_box_speaks(talker: np.ndarray) -> None:
    alone = _speech_starts(talker, box_s=0.0, said_at_s=2.0, said_ms=100)
    assert alone, "100 ms of a voice in a quiet room is speech (the burst must be one the VAD hears)"
    assert _speech_starts(talker, box_s=2.0, said_at_s=2.0, said_ms=100) == []
    # Just after the box stopped, its echo's tail is still in the room.
    assert _speech_starts(talker, box_s=1.0, said_at_s=2.0 + ECHO_TAIL_MS / 2000, said_ms=100) == []


def test_a_person_who_goes_on_talking_over_the_box_is_heard(talker: np.ndarray) -> None:
    alone = _speech_starts(talker, box_s=0.0, said_at_s=2.0, said_ms=1000)
    over = _speech_starts(talker, box_s=2.0, said_at_s=2.0, said_ms=1000)
    assert alone and over, (alone, over)
    # Later than alone by about the hold, not by more.
    assert 0.06 <= over[0] - alone[0] <= 0.3, (alone, over)


def test_erle_is_what_the_canceller_takes_out_of_the_box_alone(talker: np.ndarray) -> None:
    """The canceller leaves its residue 30 dB under the box's voice: capture reports about that,
    also when a person spoke over the box (their first words, before the VAD calls them speech,
    are not taken for the box's voice left uncancelled)."""
    # The first 200 ms of the box's voice leak whole (the canceller finding the room): the onset
    # guard sends them as silence, and they are not the canceller's figure either.
    _, alone = _run(talker, box_s=2.5, said_at_s=0.0, said_ms=0, residue_db=30, onset_frames=20)
    assert alone.onset_guard_s >= 0.4, alone
    starts, talked_over = _run(talker, box_s=2.5, said_at_s=2.0, said_ms=1000, residue_db=30)
    assert starts, "the person was heard"
    assert alone.erle_db == pytest.approx(30, abs=1), alone
    assert talked_over.erle_db == pytest.approx(30, abs=2), talked_over
    assert talked_over.double_talk_s > 0, talked_over


class _AnswerStartsWhileJudged(SpeechDetector):
    """The event loop learns of an answer while the VAD judges the period speech begins in."""

    def __init__(self, gate: MuteGate) -> None:
        super().__init__(make_vad("silero"))
        self.gate = gate
        self.armed = False

    def feed(self, pcm: bytes) -> bool:
        speaking = super().feed(pcm)
        if speaking and self.armed:
            self.armed = False
            self.gate.speaker_started(pid=1)
        return speaking


def test_only_speech_begun_while_capture_knows_the_box_speaks_is_over_the_answer(talker: np.ndarray) -> None:
    """Playback barges in only on speech "over the answer": speech capture heard begin before it
    knew an answer was playing (the question's tail, the answer's first echo before the mute) is
    not, even when it learns of the answer while judging that very period."""
    onsets: list[bool] = []
    gate = MuteGate()
    gate.half_duplex = False  # a microphone without echo: heard whether or not the box speaks
    detector = _AnswerStartsWhileJudged(gate)
    pipeline = CapturePipeline(
        SessionSink(),  # type: ignore[arg-type]
        gate,
        detector,
        StreamingPolicy(PolicySettings(mode="always", period_ms=20)),
        {k: 0.0 for k in COUNTERS},
        lambda speaking, _t, over: onsets.append(over) if speaking else None,
    )
    quiet = np.zeros(RATE, dtype="<i2")
    said = np.concatenate([quiet, talker[:RATE].astype("<i2"), quiet])
    t = T0_NS
    for when in ("never", "while judged", "before"):
        if when == "before":
            gate.speaker_started(pid=1)
        detector.armed = when == "while judged"
        for k in range(len(said) // PERIOD):
            t += 20_000_000
            pipeline.period(said[k * PERIOD : (k + 1) * PERIOD].tobytes(), t, 20_000_000)
        gate.speaker_drained(t)
    assert onsets == [False, False, True]
