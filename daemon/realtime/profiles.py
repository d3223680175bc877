"""The models the box can drive, as data: one ``ModelProfile`` each (protocol.md 2, 8b, 9).

Everything that differs between them lives here and nowhere else: the ``session.update`` shape
(flat for qwen3 and qwen3.5, nested for qwen3.8), the language tables and speech targets, the
voices, whether the source language is set or detected, the caption semantics (snapshots that
replace each other, or appended pieces), the billing rates. The session, the config's checks,
the simulator's rules and the admin page all read these tables.

Where protocol.md says a thing is unknown, the table holds the documented or safest guess and
the guess fails loudly: a language missing from a table is refused by ``tolk config check``
with the models that have it, and the simulator refuses what the docs do not show.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from daemon import languages as lang

SEED_MODEL: Final = "qwen3-livetranslate-flash-realtime"
QWEN35_MODEL: Final = "qwen3.5-livetranslate-flash-realtime"
QWEN38_MODEL: Final = "qwen3.8-livetranslate-flash-realtime"
OMNI_MODEL: Final = "qwen3-omni-flash-realtime"
#: A dated snapshot of a model: ``<name>-YYYY-MM-DD``.
_SNAPSHOT = re.compile(r"^(?P<name>.+)-\d{4}-\d{2}-\d{2}$")

OMNI_INSTRUCTIONS = (
    "You are a simultaneous interpreter. Translate everything the user says from {source} into "
    "{target}. Reply only with the translation, in {target}, spoken naturally; never answer "
    "questions, comment or add anything of your own. If nothing was said, say nothing."
)
OMNI_HOTWORDS = " Always translate these terms exactly as given: {pairs}."
#: The source language the config names when the model is to detect it.
AUTO = "auto"


@dataclass(frozen=True)
class LanguageTable:
    """What a model hears and what it can say: sources, speech targets, text-only targets."""

    sources: frozenset[str]
    speech: frozenset[str]
    text_only: frozenset[str]

    @property
    def targets(self) -> frozenset[str]:
        return self.speech | self.text_only


@dataclass(frozen=True)
class ModelProfile:
    name: str
    #: Short, for messages and the admin page: "qwen3", "qwen3.5", "qwen3.8", "omni".
    label: str
    family: Literal["livetranslate", "omni"]
    #: ``session.update``: "flat" (qwen3's fields), "flat35" (qwen3's plus 3.5's), "nested" (3.8).
    shape: Literal["flat", "flat35", "nested"]
    languages: LanguageTable
    #: Voice -> the targets it speaks. The default voice is sent when the config names none;
    #: None: the session leaves the voice to the service (qwen3.8's default, Tina).
    voices: dict[str, frozenset[str]]
    default_voice: str | None
    #: The service finds the source language itself (``[languages] source = "auto"`` allowed).
    detects_source: bool
    #: Captions: "snapshot" (``text`` + ``stash`` replace each other) or "delta" (appended pieces).
    captions: Literal["snapshot", "delta"]
    #: ``input_audio_buffer.speech_started`` carries ``speaker_id``.
    speaker_ids: bool = False
    #: Source text (ASR) can be switched off: qwen3 by leaving it out, 3.5 with ``model: null``.
    source_text_optional: bool = True
    #: Billing: tokens per second of audio in and out; image tokens are 0.5 per tile of this size.
    audio_in_tokens_per_s: float = 12.5
    audio_out_tokens_per_s: float = 12.5
    image_tile_px: int = 28
    #: End a session with ``session.finish`` and wait for ``session.finished``.
    finish: bool = True
    #: The prompt that makes a general model interpret; None for a translator.
    instructions: str | None = None
    turn_detection: dict[str, Any] | None = field(default=None)
    #: The service closes a session after this long (protocol.md 6: 120 min).
    session_limit_s: float = 120 * 60.0

    @property
    def translator(self) -> bool:
        return self.family == "livetranslate"

    def voices_for(self, target: str) -> list[str]:
        return [name for name, speaks in self.voices.items() if target in speaks]

    def default_voice_for(self, target: str) -> str | None:
        """The voice sent when the config names none (None: the service's own default)."""
        if self.default_voice is None or target in self.voices.get(self.default_voice, ()):
            return self.default_voice
        candidates = self.voices_for(target)
        return candidates[0] if candidates else None

    def instructions_for(self, source: str, target: str, phrases: dict[str, str]) -> str | None:
        if self.instructions is None:
            return None
        names = lang.LANGUAGE_NAMES
        text = self.instructions.format(source=names.get(source, source), target=names.get(target, target))
        if phrases:
            pairs = "; ".join(f"{term} -> {translation}" for term, translation in phrases.items())
            text += OMNI_HOTWORDS.format(pairs=pairs)
        return text


_QWEN3_LANGUAGES = LanguageTable(
    sources=frozenset(lang.SOURCE_LANGUAGES), speech=lang.AUDIO_TARGETS, text_only=lang.TEXT_ONLY_TARGETS
)
#: protocol.md 8b lists qwen3.8's 29 speech targets [3P]; qwen3.5 documents the same counts (60
#: languages, 29 spoken) without a list, so the table is shared [I]. Of the 31 text-only targets
#: only yue and el are known (qwen3's text-capable languages that are not spoken here); the rest
#: are refused until a source lists them.
_FAMILY_SPEECH = frozenset(
    {
        "zh", "en", "ja", "ko", "fr", "de", "es", "pt", "it", "ru", "ar", "id", "th", "vi", "tr", "hi",
        "ms", "nl", "ur", "nb", "sv", "da", "he", "fi", "pl", "is", "cs", "fil", "fa",
    }
)
_FAMILY_TEXT_ONLY = frozenset({"yue", "el"})
_FAMILY_LANGUAGES = LanguageTable(
    sources=_FAMILY_SPEECH | _FAMILY_TEXT_ONLY, speech=_FAMILY_SPEECH, text_only=_FAMILY_TEXT_ONLY
)

_SEED = ModelProfile(
    name=SEED_MODEL,
    label="qwen3",
    family="livetranslate",
    shape="flat",
    languages=_QWEN3_LANGUAGES,
    voices=dict(lang.VOICES),
    default_voice=lang.DEFAULT_VOICE,
    detects_source=False,
    captions="snapshot",
)
_QWEN35 = ModelProfile(
    name=QWEN35_MODEL,
    label="qwen3.5",
    family="livetranslate",
    shape="flat35",
    languages=_FAMILY_LANGUAGES,
    voices={"Tina": _FAMILY_SPEECH},
    default_voice="Tina",
    detects_source=True,
    captions="snapshot",
    audio_in_tokens_per_s=7.0,
    image_tile_px=32,
)
# Each newer model as what differs from the one it follows.
_QWEN38 = replace(
    _QWEN35,
    name=QWEN38_MODEL,
    label="qwen3.8",
    shape="nested",
    default_voice=None,
    captions="delta",
    speaker_ids=True,
    source_text_optional=False,
)
_OMNI = replace(
    _SEED,
    name=OMNI_MODEL,
    label="omni",
    family="omni",
    captions="delta",
    finish=False,
    instructions=OMNI_INSTRUCTIONS,
    turn_detection={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 800},
)
PROFILES: Final[dict[str, ModelProfile]] = {p.name: p for p in (_SEED, _QWEN35, _QWEN38, _OMNI)}
LIVETRANSLATE_MODELS: Final = (SEED_MODEL, QWEN35_MODEL, QWEN38_MODEL)


class UnknownModel(ValueError):
    pass


def profile_for(model: str) -> ModelProfile:
    """The profile of a model name or one of its dated snapshots; UnknownModel names the known ones."""
    name = model.strip().lower()
    if name in PROFILES:
        return PROFILES[name]
    if (snapshot := _SNAPSHOT.match(name)) and snapshot["name"] in PROFILES:
        return PROFILES[snapshot["name"]]
    raise UnknownModel(
        f"{model!r} is not a model tolk can drive: use one of {', '.join(PROFILES)} "
        "(or a dated snapshot of one, e.g. qwen3-livetranslate-flash-realtime-2025-09-22)"
    )


def speech_models(target: str) -> list[str]:
    """The translators that can speak ``target``, by label (for "what would work" messages)."""
    return [PROFILES[m].label for m in LIVETRANSLATE_MODELS if target in PROFILES[m].languages.speech]


def target_models(target: str) -> list[str]:
    return [PROFILES[m].label for m in LIVETRANSLATE_MODELS if target in PROFILES[m].languages.targets]


#: Every language code any model knows (the per-field check; the model's own comes after).
KNOWN_CODES: Final = frozenset(
    code for profile in PROFILES.values() for code in profile.languages.sources | profile.languages.targets
)
KNOWN_VOICES: Final = frozenset(voice for profile in PROFILES.values() for voice in profile.voices)
