"""The session's pure protocol pieces: the session.update it builds, parsing, captions, backoff."""

from __future__ import annotations

import base64
import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import config as config_mod
from daemon.backoff import FLEET_SPREAD, Backoff
from daemon.realtime import profiles
from daemon.realtime.rules import ClientRules, Rejected
from services.session import protocol
from services.session.captions import CaptionAssembler
from services.session.connection import is_loopback, service_url


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
    backoff = Backoff(first_s=0.5, max_s=8.0, spread=FLEET_SPREAD, rng=random.Random(1))
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


@pytest.mark.parametrize("model", ["qwen3.5-livetranslate-flash-realtime", "qwen3.8-livetranslate-flash-realtime"])
def test_every_valid_config_of_the_newer_models_is_accepted_by_their_rules(model: str) -> None:
    """Each source (auto included) x target x captions the config allows, in that model's shape."""
    profile = profiles.profile_for(model)
    table = profile.languages
    for source in ["auto", *sorted(table.sources)][:6]:
        for target in sorted(table.targets):
            for captions in (True, False):
                try:
                    config = cfg(
                        service={"model": model},
                        languages={"source": source, "target": target},
                        output={"source_captions": captions},
                    )
                except config_mod.ConfigError:
                    continue  # e.g. a text-only side: the config says why
                rules = ClientRules(profile)
                rules.check(protocol.encode(protocol.session_update(config, "e1")), 0.0)
                view = rules.view()
                assert view.target == target and view.modalities == config.modalities
                assert view.transcribe is (captions or not profile.source_text_optional)


def test_the_nested_shape_refuses_qwen3s_flat_keys_and_qwen3_the_nested_ones() -> None:
    nested = ClientRules(profiles.profile_for("qwen3.8-livetranslate-flash-realtime"))
    update = {"event_id": "e1", "type": "session.update", "session": {"modalities": ["text"]}}
    with pytest.raises(Rejected, match=r"flat shape; qwen3\.8 takes output_modalities"):
        nested.check(json.dumps(update), 0.0)
    with pytest.raises(Rejected, match="unknown session field 'output_modalities'"):
        ClientRules().check(json.dumps(update | {"session": {"output_modalities": ["text"]}}), 0.0)
    bad_rate = {"audio": {"input": {"format": {"type": "pcm", "sample_rate": 44100}}}}
    with pytest.raises(Rejected, match="16000"):
        nested.check(json.dumps(update | {"event_id": "e2", "session": bad_rate}), 0.0)


def test_the_output_rate_is_read_from_session_updated() -> None:
    assert protocol.output_rate({"session": {"output_audio_format": "pcm24"}}) == 24000
    assert protocol.output_rate({"session": {"output_audio_format": "pcm"}}) == 24000
    nested = {"session": {"audio": {"output": {"format": {"type": "pcm", "sample_rate": 16000}}}}}
    assert protocol.output_rate(nested) == 16000
    assert protocol.output_rate({"session": {}}) is None
    # "pcm16" named the sample width in older samples: never taken for 16 kHz.
    wrongs = (
        {"output_audio_format": "mp3"},
        {"output_audio_format": "pcm16"},
        {"audio": {"output": {"format": {"sample_rate": 7}}}},
    )
    for wrong in wrongs:
        with pytest.raises(protocol.ProtocolError):
            protocol.output_rate({"session": wrong})


def test_appended_source_and_translation_pieces_assemble_once() -> None:
    captions = CaptionAssembler("auto", "nl")
    source = [
        captions.feed({"type": "conversation.item.input_audio_transcription.delta", "item_id": "i1", "delta": piece})
        for piece in ("Where is", " the station?")
    ]
    assert [c.text for c in source if c] == ["Where is", "Where is the station?"]
    parts = [
        captions.feed({"type": "response.audio_transcript.delta", "response_id": "r1", "delta": piece})
        for piece in ("Waar", " is het", " station?")
    ]
    assert [c.text for c in parts if c] == ["Waar", "Waar is het", "Waar is het station?"]
    whole = "Waar is het station?"
    done = captions.feed({"type": "response.audio_transcript.done", "response_id": "r1", "transcript": whole})
    assert done is not None and done.final and done.text == whole
    assert parts[0] is not None and done.utterance == parts[0].utterance
