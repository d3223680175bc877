"""The engine quality benchmark's set, its voices and its scores (``bench/engine_quality.py`` runs them).

The set is data (``engine_quality_set.toml``). Error rates are word error rates after lower-casing
and dropping punctuation, over characters for Chinese and Japanese (no spaces between words);
translations are scored with chrF (sacrebleu's defaults) against the set's reference.
"""

from __future__ import annotations

import tomllib
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from services.engine.tts import OUTPUT_RATE, to_output_rate
from tests.helpers import espeak_wav, wav_pcm

SET_FILE = Path(__file__).with_name("engine_quality_set.toml")
#: Languages written without spaces: their error rate counts characters.
CHARACTER_LANGUAGES = frozenset({"zh", "ja", "yue"})
#: Below this chrF a translation counts as wrong (the issue's bar; a reader no longer gets the gist).
WRONG_BELOW_CHRF = 30.0


@dataclass(frozen=True)
class Sentence:
    source: str
    target: str
    text: str
    reference: str
    say: str  # what the voice reads (``text`` unless the voice cannot read it)

    @property
    def pair(self) -> str:
        return f"{self.source}->{self.target}"


@dataclass(frozen=True)
class QualitySet:
    sentences: list[Sentence]
    voices: dict[str, list[str]]


def load(path: Path = SET_FILE) -> QualitySet:
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    sentences = [
        Sentence(s["source"], s["target"], s["text"], s["reference"], s.get("say", s["text"])) for s in data["sentence"]
    ]
    voices = {language: list(names) for language, names in data["voices"].items()}
    if missing := sorted({s.source for s in sentences} - set(voices)):
        raise SystemExit(f"{path}: no voice for {', '.join(missing)} under [voices]")
    return QualitySet(sentences, voices)


def _normalise(text: str) -> str:
    kept = "".join(" " if unicodedata.category(c).startswith(("P", "S")) else c for c in text.lower())
    return " ".join(kept.split())


def error_rate(reference: str, hypothesis: str, language: str) -> float:
    """Word (or character) error rate: edits / reference length; 1.0 for nothing heard."""
    ref, hyp = _normalise(reference), _normalise(hypothesis)
    if language in CHARACTER_LANGUAGES:
        ref_units, hyp_units = list(ref.replace(" ", "")), list(hyp.replace(" ", ""))
    else:
        ref_units, hyp_units = ref.split(), hyp.split()
    previous = list(range(len(hyp_units) + 1))
    for i, r in enumerate(ref_units, 1):
        current = [i]
        for j, h in enumerate(hyp_units, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1] / max(1, len(ref_units))


def chrf(hypothesis: str, reference: str) -> float:
    from sacrebleu.metrics import CHRF

    return float(CHRF().sentence_score(hypothesis, [reference]).score)


def synthesize(voice: str, text: str, work: Path, speak_piper: Callable[[str], bytes]) -> bytes:
    """16 kHz mono s16 speech of ``text``: espeak-ng's ``voice``, or the engine's piper voice."""
    if voice == "piper":
        return to_output_rate(np.frombuffer(speak_piper(text), dtype="<i2"), OUTPUT_RATE, 16000)
    kind, _, name = voice.partition(":")
    if kind != "espeak-ng" or not name:
        raise SystemExit(f"unknown voice {voice!r}: use espeak-ng:<voice> or piper")
    out = work / f"{abs(hash((voice, text)))}.wav"
    return wav_pcm(espeak_wav(text, out, voice=name))
