"""Captions as one ordered stream per utterance, assembled from the service's transcript events.

qwen3 and qwen3.5 send ``text``/``stash`` snapshots that replace each other rather than append
(protocol.md 5.3); qwen3.8 and Omni send ``*.delta`` pieces that do append (8b), and their
``.done``/``.completed`` carry the whole text, which then replaces what was appended. Either
way each Caption carries the whole text so far, so the screen just replaces.
"""

from __future__ import annotations

from typing import Any

from daemon.messages import Caption
from services.session.protocol import text_field

_SNAPSHOT = {
    "response.audio_transcript.text": "translation",
    "response.text.text": "translation",
    "conversation.item.input_audio_transcription.text": "source",
}
#: Appended pieces (qwen3.8, Omni): the ``delta`` field, or an early LiveTranslate build's ``transcript``.
_DELTA = {
    "response.audio_transcript.delta": "translation",
    "response.text.delta": "translation",
    "conversation.item.input_audio_transcription.delta": "source",
}
_FINAL = {
    "response.audio_transcript.done": ("translation", "transcript"),
    "response.text.done": ("translation", "text"),
    "conversation.item.input_audio_transcription.completed": ("source", "transcript"),
}
_MAX_OPEN_UTTERANCES = 32


class CaptionAssembler:
    """Turns transcript events into Caption messages.

    qwen3 gives no link between a source transcription and its translation, so they are paired
    by arrival order: the n-th source item and the n-th response are utterance n. Each caption
    replaces the previous one of its utterance and kind; a final one closes it.
    """

    def __init__(self, source: str, target: str) -> None:
        self.source = source
        self.target = target
        self._counters = {"source": 0, "translation": 0}
        self._utterance: dict[tuple[str, str], str] = {}
        self._last: dict[tuple[str, str], tuple[str, str]] = {}
        self._language: dict[tuple[str, str], str] = {}

    def new_session(self) -> None:
        """A new connection: what was pending is gone, and both kinds restart side by side."""
        top = max(self._counters.values())
        self._counters = dict.fromkeys(self._counters, top)
        self._utterance.clear()
        self._last.clear()
        self._language.clear()

    def close_open(self) -> list[Caption]:
        """Final captions for what was still open when the connection was lost.

        The screen keeps what it last showed, marked final, instead of a partial that never ends.
        """
        closed = []
        for key, utterance in list(self._utterance.items()):
            text, stash = self._last.get(key, ("", ""))
            kind = key[0]
            language = self._language.get(key, self.source if kind == "source" else self.target)
            closed.append(
                Caption(utterance=utterance, kind=kind, text=text + stash, final=True, language=language)
            )
        self.new_session()
        return closed

    def feed(self, event: dict[str, Any]) -> Caption | None:
        kind_type = event["type"]
        if kind_type in _SNAPSHOT:
            kind = _SNAPSHOT[kind_type]
            key = (kind, self._key(event, kind))
            text, stash = text_field(event, "text"), text_field(event, "stash")
            self._last[key] = (text, stash)
            return self._caption(event, kind, key, text, stash, final=False)
        if kind_type in _DELTA:
            kind = _DELTA[kind_type]
            key = (kind, self._key(event, kind))
            piece = text_field(event, "delta") or text_field(event, "transcript")
            text = self._last.get(key, ("", ""))[0] + piece
            self._last[key] = (text, "")
            return self._caption(event, kind, key, text, "", final=False)
        if kind_type in _FINAL:
            kind, field = _FINAL[kind_type]
            key = (kind, self._key(event, kind))
            text = text_field(event, field)
            if not text.strip():
                last_text, last_stash = self._last.get(key, ("", ""))
                text = last_text + last_stash
            self._last.pop(key, None)
            caption = self._caption(event, kind, key, text, "", final=True)
            self._utterance.pop(key, None)
            self._language.pop(key, None)
            return caption
        return None

    def _key(self, event: dict[str, Any], kind: str) -> str:
        # Translations are keyed by response; source transcriptions by their item.
        ident = (event.get("response_id") or event.get("item_id")) if kind == "translation" else event.get("item_id")
        return ident if isinstance(ident, str) and ident else "?"

    def _caption(
        self, event: dict[str, Any], kind: str, key: tuple[str, str], text: str, stash: str, final: bool
    ) -> Caption:
        utterance = self._utterance.get(key)
        if utterance is None:
            self._counters[kind] += 1
            utterance = f"u{self._counters[kind]}"
            self._utterance[key] = utterance
            # Utterances whose final never came (a dropped response) must not pile up.
            while len(self._utterance) > _MAX_OPEN_UTTERANCES:
                stale = next(iter(self._utterance))
                self._utterance.pop(stale)
                self._last.pop(stale, None)
                self._language.pop(stale, None)
        language = self.target
        if kind == "source":
            reported = event.get("language")
            language = reported if isinstance(reported, str) and reported else self.source
        self._language[key] = language
        return Caption(utterance=utterance, kind=kind, text=text, stash=stash, final=final, language=language)
