"""What the engine accepts from a client: the documented rules, as lenient as the service is in practice.

The simulator's ``ClientRules`` (protocol.md 2-4, 6) hold every event to the documentation; the
engine reuses them, and additionally takes what the real service tolerates from its own clients
(protocol.md 2.2, 8): the official SDK's ``turn_detection`` object (its ``silence_duration_ms``
sets the engine's end of speech), ``input_audio_transcription`` with a null model or null as a
whole (off), a null voice, and the ``"pcm"``/``"pcm16"`` spellings of the audio formats. A
language pair the engine cannot do is refused here, with what it can do instead.
"""

from __future__ import annotations

import copy
from typing import Any

from daemon import engine_languages as eng_lang
from daemon.realtime.rules import ASR_MODEL, ClientRules, Rejected

_INPUT_FORMATS = {"pcm", "pcm16"}
_OUTPUT_FORMATS = {"pcm", "pcm16", "pcm24"}


class EngineRules(ClientRules):
    """ClientRules plus the engine's own limits; ``end_silence_ms`` follows the client's turn_detection."""

    def __init__(self, end_silence_ms: int, marian: frozenset[tuple[str, str]] = frozenset()) -> None:
        super().__init__()
        self.end_silence_ms = end_silence_ms
        #: The Marian pairs installed when the connection opened ([engine] marian_dir).
        self.marian = marian

    def _session_update(self, session: Any) -> None:
        if not isinstance(session, dict):
            raise Rejected("session must be an object", param="session")
        session = copy.deepcopy(session)
        end_silence = self._turn_detection(session.pop("turn_detection", None))
        transcription_off = "input_audio_transcription" in session and session["input_audio_transcription"] is None
        if transcription_off:
            del session["input_audio_transcription"]
        elif isinstance(session.get("input_audio_transcription"), dict):
            asr = session["input_audio_transcription"]
            if asr.get("model") is None:
                asr["model"] = ASR_MODEL  # the SDK's default: transcription on, model left to the service
        if session.get("voice", "") is None:
            del session["voice"]
        if session.get("input_audio_format") in _INPUT_FORMATS:
            session["input_audio_format"] = "pcm16"
        if session.get("output_audio_format") in _OUTPUT_FORMATS:
            session["output_audio_format"] = "pcm24"
        before = (self.session, self.explicit_voice, self.updated)
        super()._session_update(session)
        if transcription_off:
            self.session.pop("input_audio_transcription", None)
        source, target = self.languages()
        if eng_lang.pair(source, target, self.marian) is None:
            self.session, self.explicit_voice, self.updated = before
            raise Rejected(
                eng_lang.refusal(source, target, self.marian), code="unsupported_language", param="session.translation"
            )
        if end_silence is not None:
            self.end_silence_ms = end_silence

    def languages(self) -> tuple[str, str]:
        """(source, target); the source is "auto" when the client did not name it: the engine detects it."""
        source = self.session.get("input_audio_transcription", {}).get("language", eng_lang.AUTO)
        return source, self.session.get("translation", {}).get("language", "en")

    @property
    def source_captions(self) -> bool:
        return "input_audio_transcription" in self.session

    @property
    def with_audio(self) -> bool:
        return "audio" in self.session["modalities"]

    @staticmethod
    def _turn_detection(value: Any) -> int | None:
        if value is None:
            return None
        if not isinstance(value, dict):
            raise Rejected("session.turn_detection must be an object or null", param="session.turn_detection")
        if value.get("type", "server_vad") != "server_vad":
            raise Rejected("session.turn_detection.type must be 'server_vad'", param="session.turn_detection.type")
        silence = value.get("silence_duration_ms")
        if silence is None:
            return None
        if isinstance(silence, bool) or not isinstance(silence, int) or not 200 <= silence <= 6000:
            raise Rejected(
                "session.turn_detection.silence_duration_ms must be whole ms in [200, 6000]",
                param="session.turn_detection.silence_duration_ms",
            )
        return silence
