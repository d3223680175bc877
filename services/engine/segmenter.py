"""The engine's own end of speech: when an utterance ended, and its audio (with a short pre-roll).

The cloud decides by itself when a segment ended (protocol.md 5.2); so does the engine. Windows
of the 16 kHz input are scored by the box's voice activity detector (Silero through
``daemon.vad``, the same model capture uses); speech starts at a score of 0.5 and an
utterance ends after ``end_silence_ms`` below 0.35. Bursts shorter than ``min_speech_ms`` are
dropped (a cough, a click), and speech longer than ``max_utterance_s`` is cut there, so the
recogniser's 30 s window is never overrun and a monologue still gets translated as it goes.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from daemon.vad import QUIET_RMS, START_SCORE, STOP_SCORE, Vad, make_vad

RATE = 16000
PREROLL_MS = 300
TAIL_MS = 200


@dataclass
class Utterance:
    pcm: bytes
    speech_s: float
    #: monotonic time when the end of speech was decided (for latency figures)
    ended_at: float = field(default_factory=time.monotonic)


class Segmenter:
    def __init__(
        self,
        end_silence_ms: int = 700,
        min_speech_ms: int = 250,
        max_utterance_s: float = 15.0,
        vad: Vad | None = None,
    ) -> None:
        self.vad = vad or make_vad("silero")
        self.end_silence_ms = end_silence_ms
        self.min_speech_ms = min_speech_ms
        self.max_bytes = int(max_utterance_s * RATE) * 2
        self.vad_seconds = 0.0  # time spent scoring, for the benchmark's real-time factor
        self._window_bytes = self.vad.window * 2
        self._window_ms = self.vad.window * 1000 / RATE
        self._carry = bytearray()
        self._preroll = bytearray()
        self._segment = bytearray()
        self._in_speech = False
        self._speech_ms = 0.0
        self._silence_ms = 0.0

    @property
    def speaking(self) -> bool:
        return self._in_speech

    def feed(self, pcm: bytes) -> list[Utterance]:
        """Utterances that ended within this audio."""
        self._carry += pcm
        ended: list[Utterance] = []
        n = self._window_bytes
        while len(self._carry) >= n:
            window = bytes(self._carry[:n])
            del self._carry[:n]
            if (utterance := self._window(window)) is not None:
                ended.append(utterance)
        return ended

    def flush(self) -> Utterance | None:
        """The open utterance, ended now (the client finished the session)."""
        self._segment += self._carry
        self._carry.clear()
        return self._end()

    def _score(self, window: bytes) -> float:
        samples = np.frombuffer(window, dtype="<i2").astype(np.float32) / 32768.0
        if float(np.sqrt(np.mean(samples * samples))) * 32768.0 < QUIET_RMS:
            return 0.0
        started = time.perf_counter()
        score = self.vad.score(samples)
        self.vad_seconds += time.perf_counter() - started
        return score

    def _window(self, window: bytes) -> Utterance | None:
        score = self._score(window)
        if not self._in_speech:
            self._preroll += window
            del self._preroll[: -PREROLL_MS * RATE // 1000 * 2]
            if score >= START_SCORE:
                self._in_speech = True
                self._segment = bytearray(self._preroll)
                self._preroll.clear()
                self._speech_ms, self._silence_ms = self._window_ms, 0.0
            return None
        self._segment += window
        if score >= START_SCORE:
            self._speech_ms += self._window_ms
            self._silence_ms = 0.0
        elif score < STOP_SCORE:
            self._silence_ms += self._window_ms
        if self._silence_ms >= self.end_silence_ms or len(self._segment) >= self.max_bytes:
            return self._end()
        return None

    def _end(self) -> Utterance | None:
        speech_ms, segment = self._speech_ms, self._segment
        # Keep a little of the trailing silence: Whisper likes a clean ending, not a long gap.
        trailing = max(0.0, self._silence_ms - TAIL_MS)
        self._in_speech = False
        self._segment = bytearray()
        self._speech_ms = self._silence_ms = 0.0
        if speech_ms < self.min_speech_ms:
            return None
        cut = int(trailing * RATE / 1000) * 2
        pcm = bytes(segment[: len(segment) - cut] if cut else segment)
        return Utterance(pcm, speech_ms / 1000)
