"""Which language the simulator 'heard': a marker tone under the speech (a simulator convention).

The real service recognises the language from the speech itself and reports it in ``language``
of its source-transcription events. The simulator cannot understand speech, so test audio says
which language it is in: a steady sine at ``MARKER_HZ[code]`` mixed under the whole utterance
(``with_marker``). The simulator sums the spectrum of the utterance's loud 20 ms frames and
reports the language whose marker band clearly dominates the other markers; audio without a
marker (the box's own tone, plain speech) is reported as the configured source language, as a
service told the source language would.
"""

from __future__ import annotations

from typing import Final

import numpy as np

from daemon.languages import SOURCE_LANGUAGES

RATE = 16000
FRAME = 320  # 20 ms: 50 Hz per FFT bin
#: One marker per language, on FFT bin centres, 100 Hz apart, above most of espeak's formant energy.
MARKER_HZ: Final[dict[str, float]] = {code: 2000.0 + 100.0 * i for i, code in enumerate(SOURCE_LANGUAGES)}
#: The strongest marker band must carry this many times the power of the runner-up.
DOMINANCE = 4.0
_WINDOW = np.hanning(FRAME)
_BINS = np.array([round(hz * FRAME / RATE) for hz in MARKER_HZ.values()])


def with_marker(pcm: bytes, language: str, level: float = 0.12) -> bytes:
    """16 kHz s16le speech with ``language``'s marker tone mixed under it (for tests and benches)."""
    speech = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    t = np.arange(len(speech)) / RATE
    mixed = speech * (1.0 - level) + level * 32767 * np.sin(2 * np.pi * MARKER_HZ[language] * t)
    return np.clip(mixed, -32768, 32767).astype("<i2").tobytes()


class LanguageEar:
    """Accumulates the marker bands of one utterance's loud frames."""

    def __init__(self) -> None:
        self._power = np.zeros(len(_BINS))

    def hear(self, frame: np.ndarray) -> None:
        spectrum = np.abs(np.fft.rfft(frame * _WINDOW)) ** 2
        self._power += spectrum[_BINS]

    def language(self) -> str | None:
        """The marked language, or None when no marker clearly dominates."""
        order = np.argsort(self._power)
        best, second = self._power[order[-1]], self._power[order[-2]]
        if best <= 0 or best < DOMINANCE * second:
            return None
        return list(MARKER_HZ)[int(order[-1])]

    def reset(self) -> None:
        self._power[:] = 0.0
