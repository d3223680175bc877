"""What the simulator 'hears' and 'says': an energy end-of-speech detector and a short tone
(or, given a recorded voice, a stretch of that voice).

The service decides by itself when a segment ended (server VAD, protocol.md 5.2). The
simulator stands in for it with frame energy: 20 ms frames of the 16 kHz input are speech when
their RMS is above a threshold; after at least ``min_speech_ms`` of speech, ``end_silence_ms`` of
silence ends the utterance. Shorter bursts (a cough, a click) are forgotten.
"""

from __future__ import annotations

import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.simulator.language import LanguageEar

INPUT_RATE = 16000
OUTPUT_RATE = 24000
FRAME_MS = 20
_FRAME_BYTES = INPUT_RATE * FRAME_MS // 1000 * 2


@dataclass(frozen=True)
class Utterance:
    number: int
    speech_s: float  # frames above the threshold
    span_s: float  # from the first speech frame to the end of the trailing silence
    language: str | None = None  # from the marker tone under the speech (language.py), if any


class Endpointer:
    def __init__(
        self, threshold_rms: float = 500.0, min_speech_ms: int = 250, end_silence_ms: int = 600
    ) -> None:
        self.threshold_rms = threshold_rms
        self.min_speech_ms = min_speech_ms
        self.end_silence_ms = end_silence_ms
        self.utterances = 0
        self._carry = bytearray()
        self._in_segment = False
        self._speech_ms = 0
        self._span_ms = 0
        self._silence_ms = 0
        self._ear = LanguageEar()

    def feed(self, pcm: bytes) -> list[Utterance]:
        """Utterances that ended within this audio."""
        self._carry += pcm
        usable = len(self._carry) - len(self._carry) % _FRAME_BYTES
        if not usable:
            return []
        frames = (
            np.frombuffer(bytes(self._carry[:usable]), dtype="<i2")
            .astype(np.float64)
            .reshape(-1, _FRAME_BYTES // 2)
        )
        del self._carry[:usable]
        ended: list[Utterance] = []
        for frame, rms in zip(frames, np.sqrt(np.mean(frames * frames, axis=1)), strict=True):
            loud = float(rms) > self.threshold_rms
            if loud:
                self._ear.hear(frame)
            if (utterance := self._frame(loud)) is not None:
                ended.append(utterance)
        return ended

    def flush(self) -> Utterance | None:
        """End the open segment now (the client finished the session)."""
        utterance = self._end() if self._speech_ms >= self.min_speech_ms else None
        self._reset()
        return utterance

    def _frame(self, loud: bool) -> Utterance | None:
        if loud:
            self._in_segment = True
            self._speech_ms += FRAME_MS
            self._silence_ms = 0
        elif self._in_segment:
            self._silence_ms += FRAME_MS
        if self._in_segment:
            self._span_ms += FRAME_MS
        if self._in_segment and self._silence_ms >= self.end_silence_ms:
            utterance = self._end() if self._speech_ms >= self.min_speech_ms else None
            self._reset()
            return utterance
        return None

    def _end(self) -> Utterance:
        self.utterances += 1
        return Utterance(self.utterances, self._speech_ms / 1000, self._span_ms / 1000, self._ear.language())

    def _reset(self) -> None:
        self._in_segment = False
        self._speech_ms = self._span_ms = self._silence_ms = 0
        self._ear.reset()


def tone(seconds: float, number: int) -> bytes:
    """24 kHz mono s16le: a soft tone whose pitch tells utterances apart, with short fades."""
    t = np.arange(max(1, int(seconds * OUTPUT_RATE))) / OUTPUT_RATE
    freq = 330.0 + 55.0 * ((number - 1) % 8)
    return _faded(0.25 * 32767 * np.sin(2 * np.pi * freq * t))


def spoken(voice: bytes, seconds: float, number: int) -> bytes:
    """24 kHz mono s16le: ``seconds`` of a recorded voice, each answer from further on in it.

    A tone is one frequency, which an echo canceller can model at any delay that fits its
    period; the box's real voice is speech, broadband, and echo tests need that.
    """
    samples = np.frombuffer(voice[: len(voice) - len(voice) % 2], dtype="<i2")
    if not samples.size:
        return tone(seconds, number)
    n = max(1, int(seconds * OUTPUT_RATE))
    return _faded(samples[((number - 1) * n + np.arange(n)) % samples.size].astype(np.float64))


def _faded(signal: np.ndarray) -> bytes:
    """10 ms fades in and out (no click at either end), as s16le."""
    fade = min(len(signal) // 2, OUTPUT_RATE // 100)
    if fade:
        ramp = np.linspace(0.0, 1.0, fade)
        signal[:fade] *= ramp
        signal[-fade:] *= ramp[::-1]
    return signal.astype("<i2").tobytes()


def load_voice(path: str | Path) -> bytes:
    """The samples of a WAV file for ``spoken``: it must be 24 kHz mono 16-bit, as answers are."""
    try:
        with wave.open(str(path), "rb") as w:
            shape = (w.getframerate(), w.getnchannels(), w.getsampwidth())
            pcm = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as exc:
        raise ValueError(f"not a WAV file ({exc})") from exc
    if shape != (OUTPUT_RATE, 1, 2):
        rate, channels, width = shape
        raise ValueError(
            f"{rate} Hz, {channels} channel(s), {8 * width}-bit; answers are {OUTPUT_RATE} Hz mono 16-bit "
            f"(convert with: sox IN.wav -r {OUTPUT_RATE} -c 1 -b 16 OUT.wav)"
        )
    if not pcm:
        raise ValueError("no samples")
    return pcm


def voiced_seconds(utterance: Utterance) -> float:
    """How long an answer in a recorded voice speaks: as long as what was said (0.5 to 4 s), as
    an interpreter's does, so that someone can speak over it."""
    return min(4.0, max(0.5, utterance.speech_s))


def reply_seconds(utterance: Utterance) -> float:
    """How long the simulated translation speaks: 0.5 to 1 s."""
    return min(1.0, max(0.5, 0.6 * utterance.speech_s))
