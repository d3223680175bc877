"""The server events the engine sends, in the documented shapes and order (protocol.md 5).

Unlike the simulator, which knows its whole reply at once, the engine streams: the opening
events go as soon as the translated text exists, each sentence's speech follows as soon as it is
synthesized, and the closing events end it. The ids, ``error`` and session objects are the
shared builders (``daemon.realtime.events``).
"""

from __future__ import annotations

import base64
from typing import Any

from daemon.realtime.events import Ids, encode, error_event, session_object, usage

__all__ = ["Ids", "ResponseStream", "encode", "error_event", "session_object", "transcription_events"]

#: Audio per ``response.audio.delta``: 200 ms of 24 kHz s16 (a player can start on the first).
DELTA_BYTES = 24000 * 2 // 5


def transcription_events(ids: Ids, text: str, language: str) -> list[dict[str, Any]]:
    """The source text of one utterance: one snapshot, then ``.completed``."""
    item_id = ids.next("item")
    where = {"item_id": item_id, "content_index": 0}
    return [
        ids.event("conversation.item.input_audio_transcription.text", **where, text=text, stash="", language=language),
        ids.event("conversation.item.input_audio_transcription.completed", **where, transcript=text, language=language),
    ]


class ResponseStream:
    """One response's events, built piece by piece as the pipeline produces them."""

    def __init__(self, ids: Ids, session: dict[str, Any]) -> None:
        self.ids = ids
        self.with_audio = "audio" in session["modalities"]
        self.response_id, self.item_id = ids.next("resp"), ids.next("item")
        self.where = {"response_id": self.response_id, "item_id": self.item_id, "output_index": 0, "content_index": 0}
        self.part_type = "audio" if self.with_audio else "text"
        self.response: dict[str, Any] = {
            "id": self.response_id,
            "object": "realtime.response",
            "conversation_id": ids.next("conv"),
            "status": "in_progress",
            "modalities": list(session["modalities"]),
            "output": [],
        }
        if self.with_audio:
            self.response |= {"voice": session.get("voice"), "output_audio_format": "pcm24"}
        self.item: dict[str, Any] = {
            "id": self.item_id,
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.audio_bytes = 0

    def opening(self) -> list[dict[str, Any]]:
        return [
            self.ids.event("response.created", response=self.response),
            self.ids.event("response.output_item.added", response_id=self.response_id, output_index=0, item=self.item),
            self.ids.event("response.content_part.added", **self.where, part={"type": self.part_type, "text": ""}),
        ]

    def snapshot(self, text: str, stash: str) -> dict[str, Any]:
        kind = "response.audio_transcript.text" if self.with_audio else "response.text.text"
        return self.ids.event(kind, **self.where, text=text, stash=stash)

    def audio(self, pcm: bytes) -> list[dict[str, Any]]:
        self.audio_bytes += len(pcm)
        return [
            self.ids.event(
                "response.audio.delta", **self.where, delta=base64.b64encode(pcm[i : i + DELTA_BYTES]).decode()
            )
            for i in range(0, len(pcm), DELTA_BYTES)
        ]

    def closing(self, transcript: str) -> list[dict[str, Any]]:
        ids, where = self.ids, self.where
        events = []
        if self.with_audio:
            events.append(ids.event("response.audio_transcript.done", **where, transcript=transcript))
            events.append(ids.event("response.audio.done", **where))
            content = {"type": "audio", "transcript": transcript}
        else:
            events.append(ids.event("response.text.done", **where, text=transcript))
            content = {"type": "text", "text": transcript}
        events.append(
            ids.event("response.content_part.done", **where, part={"type": self.part_type, "text": transcript})
        )
        done_item = self.item | {"status": "completed", "content": [content]}
        events.append(
            ids.event("response.output_item.done", response_id=self.response_id, output_index=0, item=done_item)
        )
        # Nothing is billed on the box: the usage has the documented shape, and zeros.
        done = self.response | {"status": "completed", "output": [done_item], "usage": usage()}
        events.append(ids.event("response.done", response=done))
        return events
