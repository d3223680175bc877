"""The session's pure protocol pieces: the session.update it builds, parsing, captions, backoff."""

from __future__ import annotations

import base64
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import config as config_mod
from daemon.realtime.rules import ClientRules
from services.session import protocol
from services.session.captions import CaptionAssembler
from services.session.connection import Backoff, is_loopback, service_url


def cfg(**sections: dict[str, object]) -> config_mod.Config:
    return config_mod.validate(sections)


def test_session_update_for_an_audio_target_follows_the_documented_shape() -> None:
    event = protocol.session_update(cfg(languages={"source": "zh", "target": "en"}), "event_x_1")
    assert event == {
        "event_id": "event_x_1",
        "type": "session.update",
        "session": {
            "modalities": ["text", "audio"],
            "voice": "Cherry",
            "input_audio_format": "pcm16",
            "output_audio_format": "pcm24",
            "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "zh"},
            "translation": {"language": "en"},
        },
    }


@pytest.mark.parametrize("target", ["id", "vi", "th", "ar", "hi", "el", "tr"])
def test_text_only_targets_send_text_modality_and_no_voice(target: str) -> None:
    session = protocol.session_config(cfg(languages={"source": "en", "target": target}))
    assert session["modalities"] == ["text"]
    assert "voice" not in session


def test_every_valid_config_builds_an_update_the_documented_rules_accept() -> None:
    """Every source x target x captions combination the config allows is valid per protocol.md."""
    from daemon import languages as lang

    for source in lang.SOURCE_LANGUAGES:
        for target in lang.SOURCE_LANGUAGES:
            for captions in (True, False):
                config = cfg(
                    languages={"source": source, "target": target}, output={"source_captions": captions}
                )
                rules = ClientRules()
                rules.check(protocol.encode(protocol.session_update(config, "e1")), 0.0)
                assert rules.updated
                assert ("input_audio_transcription" in rules.session) is captions


def test_event_ids_are_unique_strings() -> None:
    ids = protocol.EventIds()
    seen = {ids.next() for _ in range(10_000)}
    assert len(seen) == 10_000 and all(i.startswith("event_") for i in seen)


def test_audio_append_is_plain_base64() -> None:
    pcm = bytes(range(256)) * 4
    event = protocol.audio_append(pcm, "e")
    assert base64.b64decode(event["audio"], validate=True) == pcm
    assert not event["audio"].startswith("data:")


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"\x00", "binary"),
        ("{nope", "not JSON"),
        ("[1]", "not a JSON object"),
        ('{"event_id": "x"}', "type"),
        ('{"type": 3}', "type"),
    ],
)
def test_malformed_server_frames_raise_protocol_error(raw: str | bytes, says: str) -> None:
    with pytest.raises(protocol.ProtocolError, match=says):
        protocol.parse(raw)


def test_audio_delta_decodes_and_rejects_garbage() -> None:
    pcm = b"\x01\x00\x02\x00"
    assert (
        protocol.audio_delta({"type": "response.audio.delta", "delta": base64.b64encode(pcm).decode()}) == pcm
    )
    with pytest.raises(protocol.ProtocolError):
        protocol.audio_delta({"type": "response.audio.delta", "delta": "!!"})
    with pytest.raises(protocol.ProtocolError):
        protocol.audio_delta({"type": "response.audio.delta", "delta": base64.b64encode(b"\x01").decode()})


def test_captions_replace_snapshots_and_finalize() -> None:
    captions = CaptionAssembler("zh", "en")
    where = {"response_id": "resp_1", "item_id": "item_1"}
    first = captions.feed({"type": "response.audio_transcript.text", **where, "text": "", "stash": "Good"})
    second = captions.feed(
        {"type": "response.audio_transcript.text", **where, "text": "Good", "stash": " morning"}
    )
    assert first is not None and second is not None
    assert (second.text, second.stash, second.final) == ("Good", " morning", False)
    assert first.utterance == second.utterance == "u1"
    final = captions.feed({"type": "response.audio_transcript.done", **where, "transcript": "Good morning."})
    assert final is not None and final.final and final.text == "Good morning." and final.language == "en"

    source = captions.feed(
        {
            "type": "conversation.item.input_audio_transcription.completed",
            "item_id": "i9",
            "transcript": "早上好",
        }
    )
    assert (
        source is not None
        and source.kind == "source"
        and source.utterance == "u1"
        and source.language == "zh"
    )


def test_empty_final_falls_back_to_last_snapshot() -> None:
    captions = CaptionAssembler("zh", "hi")
    captions.feed({"type": "response.text.text", "response_id": "r", "text": "नमस्ते", "stash": " दुनिया"})
    final = captions.feed({"type": "response.text.done", "response_id": "r", "text": ""})
    assert final is not None and final.text == "नमस्ते दुनिया" and final.final


def test_new_session_realigns_source_and_translation_counters() -> None:
    captions = CaptionAssembler("zh", "en")
    captions.feed(
        {"type": "conversation.item.input_audio_transcription.completed", "item_id": "a", "transcript": "x"}
    )
    captions.new_session()  # the translation of "a" never came
    src = captions.feed(
        {"type": "conversation.item.input_audio_transcription.text", "item_id": "b", "text": "y"}
    )
    tr = captions.feed({"type": "response.text.text", "response_id": "r2", "text": "z"})
    assert src is not None and tr is not None and src.utterance == tr.utterance == "u2"


def test_caption_with_a_non_string_text_is_a_protocol_error() -> None:
    with pytest.raises(protocol.ProtocolError):
        CaptionAssembler("zh", "en").feed({"type": "response.text.text", "text": 42})


def test_usage_and_errors() -> None:
    done = {
        "type": "response.done",
        "response": {
            "usage": {
                "input_tokens_details": {"audio_tokens": 25, "text_tokens": 0},
                "output_tokens_details": {"audio_tokens": 10, "text_tokens": 7},
            }
        },
    }
    assert protocol.usage(done) == protocol.UsageDelta(25, 0, 10, 7, input_tokens=25, output_tokens=17)
    assert protocol.usage({"type": "response.done", "response": {}}) is None
    fatal = protocol.service_error({"type": "error", "error": {"code": "Throttling.AllocationQuota"}})
    assert not fatal.fatal  # throttling: retry later
    assert protocol.service_error({"type": "error", "error": {"code": "InvalidApiKey", "message": "m"}}).fatal
    assert protocol.service_error({"type": "error", "error": {"code": "insufficient_quota"}}).fatal
    assert str(protocol.service_error({"type": "error", "error": "weird"})) == "error: no message"


def test_image_rules_and_tokens() -> None:
    assert protocol.image_problem(b"\x89PNG....") == "not a JPEG"
    assert "limit" in (protocol.image_problem(b"\xff\xd8\xff" + bytes(500_000)) or "")
    assert protocol.image_problem(b"\xff\xd8\xff\xe0") is None
    assert protocol.image_tokens(640, 360) == 0.5 * 23 * 13


def test_backoff_grows_is_capped_and_jittered() -> None:
    backoff = Backoff(base_s=0.5, cap_s=8.0, rng=random.Random(1))
    delays = [backoff.next_delay() for _ in range(10)]
    assert all(0.25 <= d <= 8.0 for d in delays)
    assert delays[0] <= 0.5 and max(delays[-3:]) > 4.0
    assert len({round(d, 6) for d in delays[-4:]}) == 4  # jitter: capped delays still differ
    backoff.reset()
    assert backoff.next_delay() <= 0.5
    assert backoff.next_delay(floor_s=5.0) >= 5.0


def test_loopback_detection_and_url() -> None:
    assert (
        is_loopback("ws://127.0.0.1:9/x")
        and is_loopback("ws://localhost/x")
        and is_loopback("ws://[::1]:8/x")
    )
    assert not is_loopback("wss://dashscope-intl.aliyuncs.com/api-ws/v1/realtime")
    assert service_url("wss://h/api-ws/v1/realtime", "qwen3-livetranslate-flash-realtime").endswith(
        "?model=qwen3-livetranslate-flash-realtime"
    )
    assert json.loads(protocol.encode({"a": "é"})) == {"a": "é"}


_values = (
    st.none() | st.booleans() | st.integers() | st.text(max_size=12) | st.lists(st.integers(), max_size=2)
)
_kinds = st.sampled_from(sorted(protocol.SERVER_EVENT_TYPES)) | st.text(max_size=12)
_fields = st.sampled_from(["text", "stash", "transcript", "delta", "response_id", "item_id", "language", "x"])


_events = st.builds(
    lambda kind, extra: {**extra, "type": kind}, _kinds, st.dictionaries(_fields, _values, max_size=4)
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_events, max_size=6))
def test_arbitrary_server_events_yield_captions_or_protocol_errors(events: list[dict[str, object]]) -> None:
    captions = CaptionAssembler("zh", "en")
    for event in events:
        try:
            parsed = protocol.parse(json.dumps(event))
            caption = captions.feed(parsed)
            if parsed["type"] == "response.audio.delta":
                protocol.audio_delta(parsed)
            if parsed["type"] == "response.done":
                protocol.usage(parsed)
            if parsed["type"] == "error":
                str(protocol.service_error(parsed))
        except protocol.ProtocolError:
            continue
        if caption is not None:
            assert isinstance(caption.text, str) and caption.utterance.startswith("u")
