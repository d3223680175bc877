"""Conversation mode: which way each utterance is translated.

Two sides, A (``[languages] source``) and B (``target``), on one connection configured for the
current direction. The direction comes from a button (``direction`` command), the staff's fixed
``[languages] direction``, or the language the service reports in each utterance's source
transcription; an utterance heard the wrong way is suppressed and re-sent once after the switch.
How and what it costs: docs/session.md.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from daemon.config import Config, LanguagesConfig
from services.session.pause import rms
from services.session.protocol import BYTES_PER_SAMPLE, INPUT_RATE

#: The most audio held for a re-send: a long utterance plus the pause before it.
HELD_S = 20.0
_HELD_BYTES = int(HELD_S * INPUT_RATE * BYTES_PER_SAMPLE)
#: A re-send starts this long before the first loud frame (the service's VAD prefix padding).
LEAD_IN_S = 0.3
_FRAME = INPUT_RATE // 50  # 20 ms
DIRECTIONS = ("auto", "a-to-b", "b-to-a")
_TRANSCRIPTION = frozenset(
    {
        "conversation.item.input_audio_transcription.text",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    }
)
_OUTPUT_EVENTS = frozenset(
    {
        "response.audio.delta",
        "response.audio.done",
        "response.audio_transcript.text",
        "response.audio_transcript.delta",
        "response.audio_transcript.done",
        "response.text.text",
        "response.text.delta",
        "response.text.done",
    }
)


class Direction:
    def __init__(self, languages: LanguagesConfig) -> None:
        self.button: str | None = None  # "a-to-b" / "b-to-a" while a button holds it
        self.reversed = False
        self.switches = 0  # automatic switches (each re-sent one utterance)
        self._held = bytearray()
        self._replay: bytes | None = None
        self._update_due = False
        self._just_switched = False
        self._checked: deque[str] = deque(maxlen=64)
        self._suppressed_items: deque[str] = deque(maxlen=64)
        self._suppress_next_responses = 0
        self._suppressed_responses: set[str] = set()
        #: A visitor's target language (the screen's buttons, one-way mode), or None: the staff's.
        self.visitor: str | None = None
        self.configure(languages)

    # --- what decides the direction ----------------------------------------------------------

    def configure(self, languages: LanguagesConfig) -> None:
        self.conversation = languages.mode == "conversation"
        self.staff = languages.direction
        self.expect_turns = languages.expect_turns
        self._follow_fixed()

    def command(self, direction: object) -> str:
        """A button or ``POST /api/direction``: "a-to-b"/"b-to-a" hold it, "auto" lets go.

        Returns what changed, for the log; raises ValueError on a direction that does not exist.
        """
        if direction not in DIRECTIONS:
            raise ValueError(f"direction {direction!r} is not one of {', '.join(DIRECTIONS)}")
        if not self.conversation:
            return "ignored: not in conversation mode"
        self.button = None if direction == "auto" else str(direction)
        before = self.reversed
        self._follow_fixed()
        return f"direction {self.fixed or 'auto'}" + (" (switched)" if before != self.reversed else "")

    @property
    def fixed(self) -> str | None:
        """The direction a person set (button first, then staff), or None when automatic."""
        if self.button is not None:
            return self.button
        return None if self.staff == "auto" else self.staff

    @property
    def automatic(self) -> bool:
        return self.conversation and self.fixed is None

    def _follow_fixed(self) -> None:
        wanted = self.fixed == "b-to-a" if self.fixed is not None else self.reversed
        wanted = wanted and self.conversation
        if wanted != self.reversed:
            self.reversed = wanted
            self._update_due = True
        self._held.clear()

    def visitor_language(self, language: str | None) -> bool:
        """Translate into ``language`` (None: the configured target); whether that changed anything."""
        if language == self.visitor:
            return False
        self.visitor, self._update_due = language, True
        return True

    def effective(self, cfg: Config) -> Config:
        """The config the service gets: the visitor's target if one chose; source and target
        swapped while translating B → A."""
        if self.visitor is not None and not self.conversation:
            return cfg.model_copy(update={"languages": cfg.languages.model_copy(update={"target": self.visitor})})
        if not (self.conversation and self.reversed):
            return cfg
        sides = {"source": cfg.languages.target, "target": cfg.languages.source}
        return cfg.model_copy(update={"languages": cfg.languages.model_copy(update=sides)})

    def new_connection(self) -> None:
        """What was pending belongs to the connection that ended (its events will never come)."""
        self._held.clear()
        self._replay, self._update_due, self._just_switched = None, False, False
        self._suppressed_items.clear()
        self._suppressed_responses.clear()
        self._suppress_next_responses = 0

    # --- the stream ------------------------------------------------------------------------------

    def sent(self, chunk: bytes) -> None:
        """Audio that went to the service; kept (bounded) in case its utterance must be re-sent."""
        if self.automatic:
            self._held += chunk
            if len(self._held) > _HELD_BYTES:
                del self._held[: len(self._held) - _HELD_BYTES]

    def take_switch(self) -> tuple[bool, bytes]:
        """(a ``session.update`` is due, audio to re-send after it), for the sender to act on."""
        due, replay = self._update_due, self._replay or b""
        self._update_due, self._replay = False, None
        return due, replay

    def suppressed(self, event: dict[str, Any], current_source: str, current_target: str) -> bool:
        """Whether this event's output (caption, audio) belongs to a wrong-direction utterance.

        Also where the automatic switch happens, on the first transcription event of an item.
        """
        kind = event["type"]
        if kind in _TRANSCRIPTION:
            item = _text(event.get("item_id"))
            if item in self._suppressed_items:
                return True
            language = _text(event.get("language"))
            # Judged once per item, on the first of its events that names a language.
            if self.automatic and item and language and item not in self._checked:
                self._checked.append(item)
                return self._judge(item, language, current_source, current_target)
            return False
        if kind == "response.created":
            response = event.get("response")
            rid = _text(response.get("id") if isinstance(response, dict) else None)
            if self._suppress_next_responses and rid:
                self._suppress_next_responses -= 1
                self._suppressed_responses.add(rid)
                return True
            return False
        rid = _text(event.get("response_id"))
        if kind == "response.done":
            response = event.get("response")
            rid = _text(response.get("id") if isinstance(response, dict) else None)
            if rid in self._suppressed_responses:
                self._suppressed_responses.discard(rid)
                return True
            if self.automatic and self.expect_turns and not self._suppress_next_responses:
                # A turn was translated: the other person answers next, most likely.
                self.reversed = not self.reversed
                self._update_due = True
                self._just_switched = False
                self._held.clear()
            return False
        return kind in _OUTPUT_EVENTS and rid in self._suppressed_responses

    def _judge(self, item: str, language: str, source: str, target: str) -> bool:
        if language == target and not self._just_switched:
            self._suppressed_items.append(item)
            self._suppress_next_responses += 1
            self.reversed = not self.reversed
            self.switches += 1
            self._replay, self._update_due = _from_first_sound(bytes(self._held)), True
            self._held.clear()
            self._just_switched = True
            return True
        # The right side (or a language that is neither: left as it is): a new turn starts.
        self._just_switched = False
        self._held.clear()
        return False


def _text(value: object) -> str:
    """An id as the service should send it; anything else (a malformed event) counts as none."""
    return value if isinstance(value, str) else ""


def _from_first_sound(pcm: bytes) -> bytes:
    """The held audio from just before its first loud frame: the pause before it costs tokens."""
    size = _FRAME * BYTES_PER_SAMPLE
    levels = [rms(pcm[i : i + size]) for i in range(0, len(pcm) - len(pcm) % size, size)]
    if not levels:
        return pcm
    floor = max(200.0, 0.1 * max(levels))
    loud = next((n for n, level in enumerate(levels) if level > floor), None)
    if loud is None:
        return pcm
    start = max(0, loud * _FRAME - int(LEAD_IN_S * INPUT_RATE))
    return pcm[start * BYTES_PER_SAMPLE :]
