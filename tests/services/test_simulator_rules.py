"""The simulator's client rules on arbitrary input: a clear rejection, never a crash."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.realtime.rules import EVENT_FIELDS, SESSION_FIELDS, Accepted, ClientRules, Rejected

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
field_names = st.sampled_from(sorted({*SESSION_FIELDS, "event_id", "type", "audio", "image", "session", "x"}))
event_types = st.sampled_from([*EVENT_FIELDS, "response.create", "", "session.updated"])


@st.composite
def near_events(draw: st.DrawFn) -> str | bytes:
    """Event-shaped objects with wrong, missing or extra fields, and raw garbage."""
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return draw(st.binary(max_size=40))
    if kind == 1:
        return draw(st.text(max_size=60))
    event: dict[str, Any] = draw(st.dictionaries(field_names, json_values, max_size=5))
    if draw(st.booleans()):
        event["type"] = draw(event_types)
    if draw(st.booleans()):
        event["session"] = draw(st.dictionaries(field_names, json_values, max_size=4))
    if draw(st.booleans()):
        event["audio"] = draw(st.one_of(st.text(max_size=20), st.binary(max_size=30).map(_b64)))
    return json.dumps(event)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@settings(max_examples=150, deadline=None)
@given(st.lists(near_events(), min_size=1, max_size=8))
def test_any_input_is_accepted_or_rejected_with_a_message(frames: list[str | bytes]) -> None:
    rules = ClientRules()
    for n, raw in enumerate(frames):
        try:
            result = rules.check(raw, now=float(n))
        except Rejected as exc:
            assert str(exc) and exc.code
            continue
        assert isinstance(result, Accepted)
        assert result.event["type"] in EVENT_FIELDS
        assert set(result.event) == EVENT_FIELDS[result.event["type"]]


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=0, max_size=64).filter(lambda b: len(b) % 2 == 0 and b))
def test_valid_audio_after_update_is_accepted_byte_for_byte(pcm: bytes) -> None:
    rules = ClientRules()
    rules.check(
        json.dumps({"event_id": "a", "type": "session.update", "session": {"modalities": ["text"]}}), 0.0
    )
    accepted = rules.check(
        json.dumps({"event_id": "b", "type": "input_audio_buffer.append", "audio": _b64(pcm)}), 0.1
    )
    assert accepted.payload == pcm
    assert rules.audio_appends == 1
