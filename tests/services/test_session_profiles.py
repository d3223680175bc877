"""The session process on a rich run, on the Omni profile, and fed generated garbage.

The simulator validates every client event against protocol.md's field lists (names, types,
nesting, plain base64, unique event_id, order rules): zero violations over a run that changes
the config, sends images and finishes is the proof the session speaks the protocol.
"""

from __future__ import annotations

import base64
import json
import signal
import time
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from daemon.bus import Bus
from daemon.messages import AudioIn, AudioOut, Caption, Heartbeat, Usage, VideoFrame
from services.session import protocol
from services.simulator import running_in_thread
from tests.helpers import wait_until
from tests.services.session_rig import capture as capture  # the fixture, shared
from tests.services.session_rig import feed_until, publish, session_process, write_config


def speech(seconds: float) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    return (6000 * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def jpeg(width: int, height: int, padding: int = 2000) -> bytes:
    """A JPEG's markers as a camera writes them (SOI, APP0, SOF0 with the size, EOI)."""
    app0 = b"\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    sof0 = b"\xff\xc0\x00\x11\x08" + height.to_bytes(2, "big") + width.to_bytes(2, "big")
    sof0 += b"\x03\x01\x22\x00\x02\x11\x01\x03\x11\x01"
    return b"\xff\xd8" + app0 + sof0 + bytes(padding) + b"\xff\xd9"


def test_rich_run_breaks_no_documented_rule(rundir: Path, capture: Bus) -> None:
    camera = Bus("camera", rundir)
    hotwords = '[translation]\nphrases = { "人工智能" = "Artificial Intelligence" }\n'
    prices = "price_per_million_input_tokens = 2.0\nprice_per_million_output_tokens = 8.0"
    try:
        with running_in_thread(pace_s=0.002) as sim:
            config = write_config(rundir / "tolk.toml", sim.url, extra=hotwords, service=prices)
            with session_process(rundir, config) as (proc, tap):
                feed_until(capture, sim, lambda: sim.appends > 0)
                # Someone speaks while the camera offers 5 frames/s (and one PNG): at most 2/s may go.
                pcm = speech(1.5) + bytes(32000)
                for i in range(0, len(pcm), 640):
                    if i == 6400:
                        camera.bulk.publish(VideoFrame(jpeg=b"\x89PNG\r\n\x1a\n" + bytes(100), width=8, height=8))
                    if i % 6400 == 0:
                        camera.bulk.publish(VideoFrame(jpeg=jpeg(640, 360), width=640, height=360))
                    capture.bulk.publish(AudioIn(pcm=pcm[i : i + 640]))
                    time.sleep(0.02)
                usage = tap.wait_for(lambda m: isinstance(m, Usage) and m.input_tokens > 0, what="usage")
                assert isinstance(usage, Usage)

                # Language changes go to the live session; a text-only target drops audio and voice.
                for target in ("ja", "th"):
                    write_config(config, sim.url, target=target, extra=hotwords, service=prices)
                    proc.send_signal(signal.SIGHUP)
                    wait_until(lambda t=target: _last_target(sim) == t, what=f"session.update to {target}")
                publish(capture, speech(0.6) + bytes(32000))
                tap.wait_for(lambda m: isinstance(m, Caption) and m.final and m.language == "th", what="a Thai caption")
                images = len(sim.events_of("input_image_buffer.append"))
                assert images >= 2
                beat = tap.wait_for(
                    lambda m: isinstance(m, Heartbeat) and m.counters.get("images_sent") == images, what="counters"
                )
                assert isinstance(beat, Heartbeat) and beat.counters["images_rejected"] >= 1
                late = tap.wait_for(lambda m: isinstance(m, Usage) and m.images_sent == images, what="image usage")
                assert isinstance(late, Usage)
                proc.send_signal(signal.SIGTERM)
                assert proc.wait(15) == 0
    finally:
        camera.close()

    assert sim.violations == []
    updates = [e["session"] for e in sim.events_of("session.update")]
    hotword = {"人工智能": "Artificial Intelligence"}
    assert updates[0]["translation"] == {"language": "en", "corpus": {"phrases": hotword}}
    assert updates[-1]["modalities"] == ["text"] and "voice" not in updates[-1]
    ids = [e["event_id"] for e in sim.events]
    assert len(ids) == len(set(ids)), "an event_id was used twice"
    assert sim.events[-1]["type"] == "session.finish" and sim.connections[0].finished
    assert len(sim.connections) == 1, "a language change must not reconnect"
    # Images by the seed's rule: 0.5 token per 28x28 px; a 640x360 frame is 23 x 13 tiles.
    assert late.image_tokens_estimate == round(images * 0.5 * 23 * 13)
    assert late.tokens_per_hour > 0 and late.cost_per_hour is not None and late.cost_per_hour > 0


def _last_target(sim: object) -> str:
    return str(sim.events_of("session.update")[-1]["session"]["translation"]["language"])  # type: ignore[attr-defined]


def test_omni_profile_interprets_by_instruction_and_never_sends_finish(rundir: Path, capture: Bus) -> None:
    with running_in_thread(pace_s=0.002) as sim:
        config = write_config(rundir / "tolk.toml", sim.url, service='model = "qwen3-omni-flash-realtime"')
        with session_process(rundir, config) as (proc, tap):
            feed_until(capture, sim, lambda: sim.appends > 0)
            publish(capture, speech(0.8) + bytes(32000))
            final = tap.wait_for(lambda m: isinstance(m, Caption) and m.final, what="a final caption")
            assert isinstance(final, Caption) and final.kind == "translation"
            assert final.text == "[simulated] utterance 1: 0.8 s of speech, interpreted as instructed"
            partials = [c.text for c in tap.of(Caption) if not c.final]
            assert len(partials) >= 3 and all(final.text.startswith(p) for p in partials)  # deltas append
            assert partials == sorted(partials, key=len)
            assert any(isinstance(m, AudioOut) and m.pcm for m in tap.seen)
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
    assert sim.violations == []
    session = sim.events_of("session.update")[0]["session"]
    assert "translation" not in session and "input_audio_transcription" not in session
    assert "from Chinese into English" in session["instructions"]
    assert session["turn_detection"]["type"] == "server_vad"
    assert sim.events_of("session.finish") == []


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_fields = st.sampled_from(
    ["text", "stash", "transcript", "delta", "response_id", "item_id", "language", "response", "error", "session"]
)
_event = st.builds(
    lambda kind, body: json.dumps({**body, "type": kind}),
    st.sampled_from(sorted(protocol.SERVER_EVENT_TYPES - {"session.finished"})) | st.text(max_size=8),
    st.dictionaries(_fields, _json, max_size=4),
)
_frame = _event | st.text(max_size=30) | st.binary(max_size=20) | _json.map(json.dumps)


def _not_an_event(frame: str | bytes) -> bool:
    if isinstance(frame, bytes):
        return True
    try:
        event = json.loads(frame)
    except ValueError:
        return True
    return not isinstance(event, dict) or not isinstance(event.get("type"), str) or not event["type"]


def test_generated_malformed_events_are_counted_and_skipped(rundir: Path, capture: Bus) -> None:
    sent: list[str | bytes] = []
    with running_in_thread() as sim:
        config = write_config(rundir / "tolk.toml", sim.url)
        with session_process(rundir, config) as (proc, tap):
            feed_until(capture, sim, lambda: sim.appends > 0)

            @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            @given(st.lists(_frame, min_size=1, max_size=6))
            def survives(frames: list[str | bytes]) -> None:
                marker = f"resp_probe_{len(sent)}"
                probe = {
                    "type": "response.audio.delta",
                    "response_id": marker,
                    "delta": base64.b64encode(b"\x01\x00").decode(),
                }
                assert sim.inject_threadsafe([*frames, json.dumps(probe)]) == 1
                sent.extend(frames)
                # The event after the garbage still comes out: nothing stalled, nothing crashed.
                tap.wait_for(lambda m: isinstance(m, AudioOut) and m.response_id == marker, 10, marker)

            survives()
            assert proc.poll() is None and len(sim.connections) == 1
            broken = sum(_not_an_event(f) for f in sent)
            beat = tap.wait_for(
                lambda m: isinstance(m, Heartbeat) and m.counters.get("malformed_events", 0) >= broken,
                what=f"malformed_events >= {broken}",
            )
            assert isinstance(beat, Heartbeat) and beat.counters["reconnects"] == 0
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(15) == 0
