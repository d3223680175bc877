"""Model profiles: what differs between the models the session can drive, as data.

``qwen3-livetranslate-flash-realtime`` (the default) is a translator: the target language goes
in ``session.translation``, turns are found by the service, the source can be transcribed, and
the session ends with ``session.finish``. ``qwen3-omni-flash-realtime`` (the seed's alternative)
is a general model told to interpret by an ``instructions`` prompt, with ``turn_detection``
server_vad; its transcripts arrive as ``*.delta`` events and it rejects ``session.finish``
(protocol.md 9). One client serves both: the profile says which fields and events to use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from daemon import languages as lang

LIVETRANSLATE = "qwen3-livetranslate-flash-realtime"
OMNI = "qwen3-omni-flash-realtime"

OMNI_INSTRUCTIONS = (
    "You are a simultaneous interpreter. Translate everything the user says from {source} into "
    "{target}. Reply only with the translation, in {target}, spoken naturally; never answer "
    "questions, comment or add anything of your own. If nothing was said, say nothing."
)
OMNI_HOTWORDS = " Always translate these terms exactly as given: {pairs}."


@dataclass(frozen=True)
class ModelProfile:
    family: str
    #: ``session.translation`` (target language, hotwords) is part of the session object.
    translation_field: bool
    #: ``session.input_audio_transcription`` gives captions of the source speech.
    source_transcription: bool
    #: End a session with ``session.finish`` and wait for ``session.finished``.
    finish: bool
    #: The prompt that makes a general model interpret; None for a translator.
    instructions: str | None = None
    turn_detection: dict[str, Any] | None = field(default=None)
    #: The service closes a session after this long (protocol.md 6: 120 min).
    session_limit_s: float = 120 * 60.0

    def instructions_for(self, source: str, target: str, phrases: dict[str, str]) -> str | None:
        if self.instructions is None:
            return None
        names = lang.LANGUAGE_NAMES
        text = self.instructions.format(source=names.get(source, source), target=names.get(target, target))
        if phrases:
            pairs = "; ".join(f"{term} -> {translation}" for term, translation in phrases.items())
            text += OMNI_HOTWORDS.format(pairs=pairs)
        return text


PROFILES: dict[str, ModelProfile] = {
    "livetranslate": ModelProfile(
        family="livetranslate", translation_field=True, source_transcription=True, finish=True
    ),
    "omni": ModelProfile(
        family="omni",
        translation_field=False,
        source_transcription=False,
        finish=False,
        instructions=OMNI_INSTRUCTIONS,
        turn_detection={"type": "server_vad", "threshold": 0.5, "silence_duration_ms": 800},
    ),
}


def profile_for(model: str) -> ModelProfile:
    """The profile of a model name (snapshots such as ``…-2025-09-22`` included)."""
    name = model.lower()
    if name.startswith(("qwen3-omni", "qwen-omni", "qwen3.5-omni")):
        return PROFILES["omni"]
    return PROFILES["livetranslate"]
