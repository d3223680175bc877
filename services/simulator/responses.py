"""The server events the simulator sends, built in the documented shapes and order (protocol.md 5).

Pure: each function returns the events as dicts; the server paces and sends them.
"""

from __future__ import annotations

import base64
from typing import Any

from daemon.realtime.events import Ids, encode, error_event, session_object, usage
from daemon.realtime.profiles import ModelProfile
from daemon.realtime.rules import SessionView
from services.simulator.speech import OUTPUT_RATE, Utterance


def translation_text(utterance: Utterance, source: str, target: str) -> str:
    return (
        f"[simulated] utterance {utterance.number}: {utterance.speech_s:.1f} s of speech, {source} → {target}"
    )


def omni_text(utterance: Utterance) -> str:
    return f"[simulated] utterance {utterance.number}: {utterance.speech_s:.1f} s of speech, interpreted as instructed"


def omni_turn_events(ids: Ids, utterance: Utterance) -> list[dict[str, Any]]:
    """What Omni's server VAD says around a turn (protocol.md 9), before the response."""
    item_id = ids.next("item")
    end_ms = round(utterance.span_s * 1000)
    return [
        ids.event("input_audio_buffer.speech_started", audio_start_ms=0, item_id=item_id),
        ids.event("input_audio_buffer.speech_stopped", audio_end_ms=end_ms, item_id=item_id),
        ids.event("input_audio_buffer.committed", previous_item_id=None, item_id=item_id),
        ids.event(
            "conversation.item.created",
            previous_item_id=None,
            item={"id": item_id, "object": "realtime.item", "type": "message", "status": "completed", "role": "user"},
        ),
    ]


def source_text(utterance: Utterance, source: str) -> str:
    return f"[simulated] speech {utterance.number} in {source}, {utterance.speech_s:.1f} s"


def snapshots(text: str, parts: int) -> list[tuple[str, str]]:
    """Growing (text, stash) pairs as qwen3 re-sends them: the confirmed prefix, then the tentative
    rest (which starts with its space: text + stash reads as the service means it)."""
    words = text.split(" ")
    shown = [" ".join(words[: len(words) * k // parts]) for k in range(parts + 1)]  # whole words each
    return [(shown[k - 1], shown[k][len(shown[k - 1]) :]) for k in range(1, parts + 1)]


def speech_started(ids: Ids, utterance: Utterance, speaker: str) -> dict[str, Any]:
    """qwen3.8's start of speech, with the speaker it separated (protocol.md 8b)."""
    return ids.event(
        "input_audio_buffer.speech_started", audio_start_ms=0, item_id=ids.next("item"), speaker_id=speaker
    )


def transcription_events(
    ids: Ids, utterance: Utterance, language: str, captions: str = "snapshot"
) -> list[dict[str, Any]]:
    """The source text: ``.text`` snapshots (qwen3, 3.5) or appended ``.delta`` pieces (3.8), then ``.completed``."""
    item_id = ids.next("item")
    transcript = source_text(utterance, language)
    where = {"item_id": item_id, "content_index": 0}
    if captions == "delta":
        events = [
            ids.event("conversation.item.input_audio_transcription.delta", **where, delta=piece, language=language)
            for piece in pieces(transcript, 2)
        ]
    else:
        events = [
            ids.event(
                "conversation.item.input_audio_transcription.text", **where, text=text, stash=stash, language=language
            )
            for text, stash in snapshots(transcript, 2)
        ]
    events.append(
        ids.event(
            "conversation.item.input_audio_transcription.completed", **where, transcript=transcript, language=language
        )
    )
    return events


def response_events(
    ids: Ids,
    utterance: Utterance,
    view: SessionView,
    profile: ModelProfile,
    input_audio_s: float,
    audio: bytes,
    heard: str,
    parts: int = 4,
    interrupted: bool = False,
    audio_rate: int = OUTPUT_RATE,
) -> list[dict[str, Any]]:
    """The whole lifecycle of one response, in the documented order (protocol.md 5.2).

    With audio in the modalities: interleaved transcript events and ``response.audio.delta``;
    text-only: text events and no audio at all. qwen3 and 3.5 send ``*.text`` snapshots (``text``
    + ``stash``); 3.8 and Omni append ``*.delta`` pieces (field ``delta``). An interrupted response
    has no text and no audio, only its ``.done`` events, and ends ``incomplete``. Usage is counted
    at the model's rates.
    """
    with_audio = "audio" in view.modalities
    omni = profile.family == "omni"
    transcript = omni_text(utterance) if omni else translation_text(utterance, view.source or heard, view.target)
    if interrupted:
        transcript, audio = "", b""
    response_id, item_id = ids.next("resp"), ids.next("item")
    part_type = "audio" if with_audio else "text"
    where = {"response_id": response_id, "item_id": item_id, "output_index": 0, "content_index": 0}
    response: dict[str, Any] = {
        "id": response_id,
        "object": "realtime.response",
        "conversation_id": ids.next("conv"),
        "status": "in_progress",
        "modalities": list(view.modalities),
        "output": [],
    }
    if with_audio:
        response |= {"voice": view.voice, "output_audio_format": "pcm24"}
    item: dict[str, Any] = {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "assistant",
        "content": [],
    }
    events = [
        ids.event("response.created", response=response),
        ids.event("response.output_item.added", response_id=response_id, output_index=0, item=item),
        ids.event("response.content_part.added", **where, part={"type": part_type, "text": ""}),
    ]
    chunks = _split(audio, parts) if with_audio else []
    for n, (text, stash) in enumerate([] if interrupted else snapshots(transcript, parts)):
        if profile.captions == "delta":
            kind = "response.audio_transcript.delta" if with_audio else "response.text.delta"
            events.append(ids.event(kind, **where, delta=pieces(transcript, parts)[n]))
        else:
            kind = "response.audio_transcript.text" if with_audio else "response.text.text"
            events.append(ids.event(kind, **where, text=text, stash=stash))
        if with_audio and chunks[n]:
            events.append(
                ids.event("response.audio.delta", **where, delta=base64.b64encode(chunks[n]).decode())
            )
    if with_audio:
        events.append(ids.event("response.audio_transcript.done", **where, transcript=transcript))
        events.append(ids.event("response.audio.done", **where))
        content = {"type": "audio", "transcript": transcript}
    else:
        events.append(ids.event("response.text.done", **where, text=transcript))
        content = {"type": "text", "text": transcript}
    events.append(
        ids.event("response.content_part.done", **where, part={"type": part_type, "text": transcript})
    )
    done_item = item | {"status": "completed", "content": [content]}
    events.append(
        ids.event("response.output_item.done", response_id=response_id, output_index=0, item=done_item)
    )
    out_audio_s = len(audio) / (2 * audio_rate) if with_audio else 0.0
    text_tokens = len(transcript.split())
    audio_in_tokens = round(input_audio_s * profile.audio_in_tokens_per_s)
    audio_out_tokens = round(out_audio_s * profile.audio_out_tokens_per_s)
    billed = usage(audio_in=audio_in_tokens, audio_out=audio_out_tokens, text_out=text_tokens)
    status = "incomplete" if interrupted else "completed"
    done = response | {"status": status, "output": [done_item], "usage": billed}
    events.append(ids.event("response.done", response=done))
    return events


def pieces(text: str, parts: int) -> list[str]:
    """``text`` as ``parts`` appended pieces (qwen3.8's and Omni's deltas): joined, they are ``text``."""
    return [stash for _confirmed, stash in snapshots(text, parts)]


def _split(audio: bytes, parts: int) -> list[bytes]:
    samples = len(audio) // 2
    bounds = [samples * k // parts * 2 for k in range(parts + 1)]
    return [audio[bounds[k] : bounds[k + 1]] for k in range(parts)]


MALFORMED_FRAMES: tuple[str | bytes, ...] = (
    "this is not JSON {",
    "[1, 2, 3]",
    '{"event_id": "event_bad1", "no_type": true}',
    b"\x00\x01binary",
    '{"event_id": "event_bad2", "type": "response.audio.delta", "delta": "!!not base64!!"}',
    '{"event_id": "event_bad3", "type": "response.audio_transcript.text", "text": 42}',
    '{"event_id": "event_bad4", "type": "simulator.surprise"}',
)
"""What ``malformed`` faults send: every kind of broken event a client must survive."""


__all__ = ["Ids", "encode", "error_event", "session_object"]
