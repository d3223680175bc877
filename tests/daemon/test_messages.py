"""Every bus message survives encode/decode; anything else is refused with MessageError."""

from __future__ import annotations

import contextlib
import dataclasses
import json
from typing import get_args

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.messages import (
    ALL_MESSAGES,
    PROTOCOL_VERSION,
    AudioIn,
    Caption,
    Channel,
    CommandName,
    Heartbeat,
    Message,
    MessageError,
    ProcessState,
)

_ints = st.integers(min_value=0, max_value=2**62)
_text = st.text(max_size=40)
_FIELD_STRATEGIES = {
    "int": _ints,
    "str": _text,
    "bool": st.booleans(),
    "bytes": st.binary(max_size=4096),
    "float": st.floats(allow_nan=False, allow_infinity=False, width=64),
    "float | None": st.none() | st.floats(allow_nan=False, allow_infinity=False, width=64),
    "dict[str, float]": st.dictionaries(_text, st.floats(allow_nan=False, allow_infinity=False), max_size=5),
    "dict[str, Any]": st.dictionaries(_text, st.one_of(_ints, _text, st.booleans()), max_size=5),
    "dict[str, Any] | None": st.none() | st.dictionaries(_text, st.one_of(_ints, _text, st.booleans()), max_size=5),
    "list[str]": st.lists(_text, max_size=5),
    # The typed names: every value of the Literal travels as its string.
    "ProcessState": st.sampled_from(get_args(ProcessState)),
    "CommandName | Literal['']": st.sampled_from([*get_args(CommandName), ""]),
}


def _instances(cls: type[Message]) -> st.SearchStrategy[Message]:
    kwargs = {f.name: _FIELD_STRATEGIES[str(f.type)] for f in dataclasses.fields(cls)}
    return st.builds(cls, **kwargs)


@pytest.mark.parametrize("cls", ALL_MESSAGES, ids=lambda c: c.topic)
@given(data=st.data())
def test_round_trip(cls: type[Message], data: st.DataObject) -> None:
    msg = data.draw(_instances(cls))
    frames = msg.to_frames()
    assert frames[0] == cls.topic.encode()
    decoded = Message.from_frames(frames)
    assert type(decoded) is cls
    assert decoded == msg
    # Decoding through the concrete class gives the same result.
    assert cls.from_frames(frames) == msg


def test_every_topic_is_unique_and_bulk_carries_a_payload() -> None:
    topics = [c.topic for c in ALL_MESSAGES]
    assert len(topics) == len(set(topics))
    for cls in ALL_MESSAGES:
        if cls.channel is Channel.BULK:
            assert cls.payload_field is not None, cls


def test_no_topic_begins_with_another() -> None:
    # A SUB socket filters by prefix: a subscriber to "config" would also get a "config.x" it
    # cannot handle.
    topics = [c.topic for c in ALL_MESSAGES]
    clashes = [(a, b) for a in topics for b in topics if a != b and b.startswith(a)]
    assert not clashes


def test_header_carries_version_seq_and_monotonic_stamp() -> None:
    msg = AudioIn(pcm=b"\x01\x02" * 160, seq=7)
    _topic, header, payload = msg.to_frames()
    fields = json.loads(header)
    assert fields["v"] == PROTOCOL_VERSION and fields["seq"] == 7 and fields["t"] > 0
    assert "pcm" not in fields and payload == msg.pcm  # raw bytes, never base64 on the bus


@pytest.mark.parametrize(
    "frames",
    [
        [],
        [b"audio.in"],
        [b"no.such.topic", b"{}"],
        [b"caption", b"not json"],
        [b"caption", b"[1,2]"],
        [b"caption", json.dumps({"v": PROTOCOL_VERSION + 1}).encode()],
        [b"caption", json.dumps({"v": PROTOCOL_VERSION, "text": 5}).encode()],
        [b"caption", json.dumps({"v": PROTOCOL_VERSION, "final": "yes"}).encode()],
        [b"heartbeat", json.dumps({"v": PROTOCOL_VERSION, "pid": True}).encode()],
        [b"audio.in", json.dumps({"v": PROTOCOL_VERSION}).encode()],
        [b"caption", json.dumps({"v": PROTOCOL_VERSION}).encode(), b"extra"],
    ],
)
def test_malformed_frames_are_refused(frames: list[bytes]) -> None:
    with pytest.raises(MessageError):
        Message.from_frames(frames)


def test_decoding_as_the_wrong_class_is_refused() -> None:
    with pytest.raises(MessageError):
        Caption.from_frames(Heartbeat(service="capture").to_frames())


@given(st.lists(st.binary(max_size=64), max_size=4))
def test_arbitrary_frames_never_crash_the_decoder(frames: list[bytes]) -> None:
    with contextlib.suppress(MessageError):
        Message.from_frames(frames)


def test_unknown_header_fields_from_a_newer_peer_are_ignored() -> None:
    topic, header, *_ = Caption(text="hi").to_frames()
    fields = json.loads(header)
    fields["future_field"] = 1
    msg = Message.from_frames([topic, json.dumps(fields).encode()])
    assert isinstance(msg, Caption) and msg.text == "hi"
