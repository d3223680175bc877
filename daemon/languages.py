"""The seed model's language and voice tables, as its public page gives them, and every
language's name.

The newer models' tables are built in ``daemon/realtime/profiles.py``, which is what
validation (config file, HTTP) and the admin page read.
"""

from __future__ import annotations

from typing import Final

LANGUAGE_NAMES: Final[dict[str, str]] = {
    "en": "English",
    "zh": "Chinese",
    "ru": "Russian",
    "fr": "French",
    "de": "German",
    "pt": "Portuguese",
    "es": "Spanish",
    "it": "Italian",
    "id": "Indonesian",
    "ko": "Korean",
    "ja": "Japanese",
    "vi": "Vietnamese",
    "th": "Thai",
    "ar": "Arabic",
    "yue": "Cantonese",
    "hi": "Hindi",
    "el": "Greek",
    "tr": "Turkish",
    # The newer models' (daemon/realtime/profiles.py).
    "ms": "Malay",
    "nl": "Dutch",
    "ur": "Urdu",
    "nb": "Norwegian Bokmål",
    "sv": "Swedish",
    "da": "Danish",
    "he": "Hebrew",
    "fi": "Finnish",
    "pl": "Polish",
    "is": "Icelandic",
    "cs": "Czech",
    "fil": "Filipino",
    "fa": "Persian",
}

#: The seed's 18 languages; every one is a valid source language.
SOURCE_LANGUAGES: Final[tuple[str, ...]] = tuple(LANGUAGE_NAMES)[:18]

#: Targets the service can speak (audio and text).
AUDIO_TARGETS: Final[frozenset[str]] = frozenset(
    {"en", "zh", "ru", "fr", "de", "pt", "es", "it", "ko", "ja", "yue"}
)

#: Targets the service can only write (text).
TEXT_ONLY_TARGETS: Final[frozenset[str]] = frozenset(SOURCE_LANGUAGES) - AUDIO_TARGETS

_MULTILINGUAL: Final[frozenset[str]] = frozenset({"zh", "en", "fr", "de", "ru", "it", "es", "pt", "ja", "ko"})

#: Voice parameter -> the target languages it can speak.
VOICES: Final[dict[str, frozenset[str]]] = {
    "Cherry": _MULTILINGUAL,
    "Nofish": _MULTILINGUAL,
    "Ethan": _MULTILINGUAL,
    "Jada": frozenset({"zh"}),
    "Dylan": frozenset({"zh"}),
    "Sunny": frozenset({"zh"}),
    "Peter": frozenset({"zh"}),
    "Eric": frozenset({"zh"}),
    "Kiki": frozenset({"yue"}),
}

VOICE_DESCRIPTIONS: Final[dict[str, str]] = {
    "Cherry": "A cheerful, friendly, and genuine young woman.",
    "Nofish": "A designer who has difficulty pronouncing retroflex consonants.",
    "Ethan": "Standard Mandarin with a slight northern accent. Sunny, warm, energetic, and vibrant.",
    "Jada": "Shanghai-Jada: a bustling and energetic Shanghai lady.",
    "Dylan": "Beijing-Dylan: a young man who grew up in the hutongs of Beijing.",
    "Sunny": "Sichuan-Sunny: a sweet girl from Sichuan.",
    "Peter": "Tianjin-Peter: in the style of a Tianjin crosstalk performer.",
    "Eric": "Sichuan-Eric: a man from Chengdu, unconventional, stands out from the crowd.",
    "Kiki": "Cantonese-Kiki: a sweet best friend from Hong Kong.",
    "Tina": "qwen3.5 and qwen3.8's default voice.",
}

DEFAULT_VOICE: Final[str] = "Cherry"


def voices_for(target: str) -> list[str]:
    """The voices that can speak ``target``, in table order."""
    return [name for name, langs in VOICES.items() if target in langs]


def default_voice_for(target: str) -> str | None:
    """The voice used when the config names none: Cherry, or the first that speaks ``target``."""
    if target in VOICES[DEFAULT_VOICE]:
        return DEFAULT_VOICE
    candidates = voices_for(target)
    return candidates[0] if candidates else None


def has_audio(target: str) -> bool:
    return target in AUDIO_TARGETS


def describe(code: str) -> str:
    return f"{code} ({LANGUAGE_NAMES.get(code, 'unknown')})"
