"""A simulated room for the echo tests and ``bench/aec.py``: the box's voice and a talker.

The box speaks (espeak-ng German, 24 kHz, as the session hands playback its audio) from
``BOX_AT_S``; it reaches the microphone through the room: ``delay_ms`` later, at ``gain``, with
two early reflections and a little noise. A talker (espeak-ng English, 16 kHz) starts while
the box is still speaking (double talk) and goes on after it stops. Everything runs through the
capture pipeline exactly as the capture thread runs it (canceller, mute gate, VAD, streaming
policy), fed period by period on a simulated monotonic clock; the reference reaches capture as
playback publishes it: 20 ms chunks stamped with when they play, ``DEVICE_BUFFER_MS`` before they
do, their stamps jittered by scheduling.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soxr

from daemon.messages import AudioIn, EchoState
from daemon.vad import SpeechDetector, make_vad
from services.capture.aec import EchoCanceller
from services.capture.mute import MuteGate
from services.capture.pipeline import CapturePipeline
from services.capture.policy import PolicySettings, StreamingPolicy
from services.capture.reference import RenderReference
from tests.helpers import espeak_wav

RATE = 16000
PERIOD_MS = 20
PERIOD = RATE * PERIOD_MS // 1000
RENDER_RATE = 24000
RENDER_CHUNK = RENDER_RATE * PERIOD_MS // 1000
BOX_AT_S = 0.5
TALKER_AT_S = 6.5
DEVICE_BUFFER_MS = 100
T0_NS = 1_000_000_000_000  # an arbitrary monotonic origin
BOX_TEXT = (
    "Guten Morgen zusammen. Heute gehen wir durch den alten Hafen, wo die Schiffe der Kaufleute "
    "aus dem Norden ankamen. Bitte bleiben Sie in meiner Nähe und halten Sie Ihre Fahrkarten bereit."
)
TALKER_TEXT = (
    "On the left you see the customs house, built in the year seventeen twenty. "
    "The merchants paid their duties here before the goods went to the market."
)


@dataclass
class Voices:
    box24: np.ndarray  # int16, 24 kHz: what playback plays
    talker: np.ndarray  # int16, 16 kHz: the person at the microphone, as the microphone hears them


def make_voices(workdir: Path) -> Voices:
    talker = espeak_wav(TALKER_TEXT, workdir / "talker.wav")
    with wave.open(str(talker)) as w:
        talker16 = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    return Voices(box24=box_voice(workdir), talker=talker16.copy())


def box_voice(workdir: Path, text: str = BOX_TEXT) -> np.ndarray:
    """The box speaking ``text`` (espeak-ng German) at 24 kHz, int16, as playback plays it."""
    box = espeak_wav(text, workdir / "box.wav", voice="de", rate16k=False)
    with wave.open(str(box)) as w:
        raw = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return np.asarray(soxr.resample(raw, w.getframerate(), RENDER_RATE, quality="VHQ"), dtype=np.int16)


@dataclass
class Room:
    delay_ms: int = 80
    gain: float = 0.5
    noise_rms: float = 30.0
    seed: int = 7


@dataclass
class Scene:
    mic: np.ndarray  # float64, what the microphone hears
    echo: np.ndarray  # the box's voice in it
    talker: np.ndarray  # the talker in it (the clean reference for double talk)
    box_span: tuple[int, int]  # samples during which the box speaks (as played)
    talker_span: tuple[int, int]

    @property
    def box_only(self) -> slice:
        """Only the box speaks: from 1.5 s after it starts (the canceller's first adaptation) to the talker."""
        return slice(self.box_span[0] + int(1.5 * RATE), self.talker_span[0])

    @property
    def double_talk(self) -> slice:
        return slice(self.talker_span[0], min(self.box_span[1], self.talker_span[1]))


def make_scene(voices: Voices, room: Room) -> Scene:
    box16 = soxr.resample(voices.box24, RENDER_RATE, RATE, quality="VHQ").astype(np.float64)
    box_at, talker_at = int(BOX_AT_S * RATE), int(TALKER_AT_S * RATE)
    total = max(box_at + len(box16), talker_at + len(voices.talker)) + RATE
    played = np.zeros(total)
    played[box_at : box_at + len(box16)] = box16
    echo = np.zeros(total)
    for extra_ms, share in ((0, 1.0), (7, 0.3), (19, 0.15)):  # direct sound and two reflections
        lag = (room.delay_ms + extra_ms) * RATE // 1000
        echo[lag:] += played[: total - lag] * room.gain * share
    talker = np.zeros(total)
    talker[talker_at : talker_at + len(voices.talker)] = voices.talker
    noise = np.random.default_rng(room.seed).normal(0.0, room.noise_rms, total)
    return Scene(
        mic=np.clip(echo + talker + noise, -32768, 32767),
        echo=echo,
        talker=talker,
        box_span=(box_at, box_at + len(box16)),
        talker_span=(talker_at, talker_at + len(voices.talker)),
    )


class SessionSink:
    """Stands where the bulk publisher is: keeps what would go to the session."""

    def __init__(self) -> None:
        self.pcm = bytearray()

    def publish(self, msg: AudioIn) -> None:
        self.pcm += msg.pcm


def run_capture(voices: Voices, scene: Scene, echo: str, vad: str = "webrtc") -> tuple[np.ndarray, EchoState]:
    """The scene through the capture pipeline with ``[audio] echo`` = ``echo``: what the session
    gets, and the canceller's figures."""
    counters: dict[str, float] = {
        k: 0
        for k in (
            "chunks",
            "bytes",
            "muted_chunks",
            "seconds_captured",
            "seconds_sent",
            "utterances",
            "keepalives",
            "vad_windows",
        )
    }
    gate = MuteGate()
    gate.half_duplex = echo == "half-duplex"
    sink = SessionSink()
    pipeline = CapturePipeline(
        sink,  # type: ignore[arg-type]
        gate,
        SpeechDetector(make_vad(vad)),
        StreamingPolicy(PolicySettings(mode="always", period_ms=PERIOD_MS)),
        counters,
        lambda speaking, t, over: None,
    )
    reference = RenderReference()
    figures = EchoState()
    if echo == "aec":
        pipeline.echo = EchoCanceller(reference, figures)
    jitter = np.random.default_rng(3)
    period_ns = PERIOD_MS * 1_000_000
    render_at_ns = T0_NS + int(BOX_AT_S * 1e9)  # when the box's first sample plays
    box_end_ns = render_at_ns + int(len(voices.box24) / RENDER_RATE * 1e9)
    rendered = 0
    mic = scene.mic.astype("<i2")
    for k in range(len(mic) // PERIOD):
        end_ns = T0_NS + (k + 1) * period_ns
        # Playback hands the device its audio ahead of playing it, and says when it will play.
        while rendered < len(voices.box24):
            plays_ns = render_at_ns + rendered * 1_000_000_000 // RENDER_RATE
            if plays_ns > end_ns + DEVICE_BUFFER_MS * 1_000_000:
                break
            chunk = voices.box24[rendered : rendered + RENDER_CHUNK]
            stamp = plays_ns + int(jitter.normal(0, 2e6))  # scheduling jitter of the stamp
            reference.add(chunk.astype("<i2").tobytes(), stamp, RENDER_RATE)
            if rendered == 0:
                gate.speaker_started()
            rendered += len(chunk)
        if rendered >= len(voices.box24) and gate.speaker and end_ns > box_end_ns:
            gate.speaker_drained(box_end_ns)
        mic_stamp = end_ns + int(jitter.normal(0, 1e6))  # the reader's stamp jitters too
        pipeline.period(mic[k * PERIOD : (k + 1) * PERIOD].tobytes(), mic_stamp, period_ns)
    return np.frombuffer(bytes(sink.pcm), dtype="<i2").astype(np.float64), figures


# --- measures --------------------------------------------------------------------------------


def energy_db(x: np.ndarray) -> float:
    return 10 * float(np.log10(max(float(np.dot(x, x)), 1e-9)))


def erle_db(scene: Scene, out: np.ndarray) -> float:
    """How much quieter the box's voice reaches the session than the microphone, while only it speaks."""
    span = scene.box_only
    return energy_db(scene.mic[span]) - energy_db(out[span])


def envelope(x: np.ndarray, frame: int = RATE // 100) -> np.ndarray:
    n = len(x) // frame
    return np.sqrt(np.mean(x[: n * frame].reshape(n, frame) ** 2, axis=1))


def talker_envelope_correlation(scene: Scene, out: np.ndarray) -> float:
    """Correlation of the 10 ms loudness envelope of what the session got with the clean talker's,
    over the double talk; the canceller's own few milliseconds of delay are searched for (≤ 20 ms)."""
    span = scene.double_talk
    clean = envelope(scene.talker[span])
    best = -1.0
    for lag in range(0, RATE // 50 + 1, 16):
        got = envelope(out[span.start + lag : span.stop + lag])
        if np.std(got) == 0:
            continue
        best = max(best, float(np.corrcoef(clean, got)[0, 1]))
    return best


def talker_kept_db(scene: Scene, out: np.ndarray) -> float:
    """The talker's level in what the session got during double talk, against the talker alone."""
    span = scene.double_talk
    return energy_db(out[span]) - energy_db(scene.talker[span])
