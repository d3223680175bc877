"""The protocol simulator: it answers as protocol.md documents and holds clients to the documentation.

Real WebSockets on loopback; the client side here is a plain websockets client sending JSON.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from services.simulator import Faults, Simulator
from services.simulator.speech import Endpointer
from tests.helpers import REPO, free_port, tolk_cmd
from tests.services.simulator_client import AUDIO_SESSION, MODEL, Client, open_client, silence, speech
from tests.services.simulator_client import sim as sim  # the fixture

DOCUMENTED_ORDER = [
    "response.created",
    "response.output_item.added",
    "response.content_part.added",
    # interleaved transcript snapshots and audio deltas come here
    "response.audio_transcript.done",
    "response.audio.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.done",
]
DELTAS = {"response.audio_transcript.text", "response.audio.delta"}


async def test_response_lifecycle_arrives_in_documented_order(sim: Simulator) -> None:
    client = await open_client(sim)
    updated = await client.configure()
    assert updated["type"] == "session.updated"
    assert updated["session"]["translation"] == {"language": "en"}
    assert updated["session"]["voice"] == "Cherry"

    spoken = speech(1.2) + silence(0.8)
    await client.append(spoken)
    events = await client.until("response.done")
    kinds = [e["type"] for e in events]

    # Source transcription first (it was asked for), with the configured language.
    source = [e for e in events if e["type"].startswith("conversation.item.input_audio_transcription")]
    assert source[-1]["type"] == "conversation.item.input_audio_transcription.completed"
    assert source[-1]["language"] == "zh" and "[simulated]" in source[-1]["transcript"]

    lifecycle = [k for k in kinds if k.startswith("response.") and k not in DELTAS]
    assert lifecycle == DOCUMENTED_ORDER
    start, end = kinds.index("response.content_part.added"), kinds.index("response.audio_transcript.done")
    middle = kinds[start + 1 : end]
    assert set(middle) == {"response.audio_transcript.text", "response.audio.delta"}
    assert middle[0] == "response.audio_transcript.text" and "response.audio.delta" in middle[1:3]

    snapshots = [e for e in events if e["type"] == "response.audio_transcript.text"]
    final = next(e for e in events if e["type"] == "response.audio_transcript.done")["transcript"]
    assert snapshots[-1]["text"] + snapshots[-1]["stash"] == final  # shown as text + stash (protocol.md 5.3)
    assert final == "[simulated] utterance 1: 1.2 s of speech, zh → en"

    pcm = b"".join(base64.b64decode(e["delta"]) for e in events if e["type"] == "response.audio.delta")
    assert 0.5 <= len(pcm) / 48000 <= 1.0  # 24 kHz mono s16
    assert np.abs(np.frombuffer(pcm, "<i2")).max() > 1000

    usage = events[-1]["response"]["usage"]
    assert usage["output_tokens_details"]["audio_tokens"] == round(len(pcm) / 48000 * 12.5)
    heard = usage["input_tokens_details"]["audio_tokens"] / 12.5
    assert 1.2 <= heard <= 2.0
    assert events[-1]["response"]["status"] == "completed"

    await client.send("session.finish")
    assert [e["type"] for e in await client.until("session.finished")] == ["session.finished"]
    await client.ws.close()
    assert sim.violations == []
    assert bytes(sim.audio_in) == spoken
    assert sim.appends == len(spoken) // 3200


async def test_text_only_target_gets_text_events_and_no_audio(sim: Simulator) -> None:
    client = await open_client(sim)
    session = {"modalities": ["text"], "translation": {"language": "hi"}}
    assert (await client.configure(session))["type"] == "session.updated"
    await client.append(speech(0.6) + silence(0.7))
    events = await client.until("response.done")
    kinds = [e["type"] for e in events]
    assert not any("audio" in k for k in kinds)
    assert "response.text.text" in kinds and "response.text.done" in kinds
    done = next(e for e in events if e["type"] == "response.text.done")
    assert done["text"].endswith("en → hi")
    assert events[-1]["response"]["usage"]["output_tokens_details"]["audio_tokens"] == 0
    await client.ws.close()
    assert sim.violations == []


@pytest.mark.parametrize(
    ("session", "param", "says"),
    [
        ({"modalities": ["audio"]}, "session.modalities", "Invalid modalities"),
        (
            {"modalities": ["text", "audio"], "translation": {"language": "th"}},
            "session.modalities",
            "text output",
        ),
        ({"voice": "Robot"}, "session.voice", "unknown voice"),
        ({"voice": "Kiki", "translation": {"language": "en"}}, "session.voice", "cannot speak"),
        ({"input_audio_format": "pcm"}, "session.input_audio_format", "pcm16"),
        ({"output_audio_format": "mp3"}, "session.output_audio_format", "pcm24"),
        ({"turn_detection": {"type": "server_vad"}}, "session.turn_detection", "not documented"),
        ({"translation": {"language": "xx"}}, "session.translation.language", "unsupported"),
    ],
)
async def test_invalid_session_update_gets_error_and_no_updated(
    sim: Simulator, session: dict[str, Any], param: str, says: str
) -> None:
    client = await open_client(sim)
    answer = await client.configure(session)
    assert answer["type"] == "error"
    assert answer["error"]["type"] == "invalid_request_error"
    assert answer["error"]["param"] == param
    assert says in answer["error"]["message"]
    assert answer["error"]["event_id"] == "event_test_1"
    # Nothing follows: the configuration was not taken, so audio is still refused.
    await client.append(silence(0.1))
    assert "session.updated" in (await client.recv())["error"]["message"]
    await client.ws.close()
    assert len(sim.violations) == 2


async def test_client_rule_violations_are_answered_and_recorded(sim: Simulator) -> None:
    client = await open_client(sim)
    assert (await client.recv())["type"] == "session.created"

    async def expect_error(raw: str | bytes, says: str) -> None:
        await client.ws.send(raw)
        answer = await client.recv()
        assert answer["type"] == "error", answer
        assert says in answer["error"]["message"]

    def ev(kind: str, event_id: str = "", **fields: Any) -> str:
        return json.dumps({"event_id": event_id or f"id-{time.monotonic_ns()}", "type": kind, **fields})

    b64 = base64.b64encode(silence(0.1)).decode()
    await expect_error(ev("input_audio_buffer.append", audio=b64), "before session.updated")
    await client.send("session.update", session=AUDIO_SESSION)
    assert (await client.recv())["type"] == "session.updated"
    jpeg = base64.b64encode(b"\xff\xd8\xff\xe0" + bytes(100)).decode()
    await expect_error(
        ev("input_image_buffer.append", image=jpeg), "before the first input_audio_buffer.append"
    )
    await expect_error(json.dumps({"type": "input_audio_buffer.append", "audio": b64}), "event_id is missing")
    await client.ws.send(ev("input_audio_buffer.append", event_id="dup", audio=b64))  # valid: no answer
    await expect_error(ev("input_audio_buffer.append", event_id="dup", audio=b64), "already used")
    await expect_error(ev("input_audio_buffer.append", audio="data:audio/pcm;base64," + b64), "data: URL")
    await expect_error(ev("input_audio_buffer.append", audio=b64[:-3] + "!!="), "not valid base64")
    await expect_error(ev("input_audio_buffer.append", audio=b64, extra=1), "unknown field")
    await expect_error(ev("response.create"), "invalid event type")
    await expect_error(b"\x00binary", "binary frame")
    await expect_error("not json", "not JSON")
    png = base64.b64encode(b"\x89PNG\r\n\x1a\n" + bytes(100)).decode()
    await expect_error(ev("input_image_buffer.append", image=png), "not a JPEG")
    big = base64.b64encode(b"\xff\xd8\xff" + bytes(500_000)).decode()
    await expect_error(ev("input_image_buffer.append", image=big), "over 500000 bytes")
    await client.send("input_image_buffer.append", image=jpeg)
    await client.send("input_image_buffer.append", image=jpeg)
    await expect_error(ev("input_image_buffer.append", image=jpeg), "more than 2 images per second")
    await client.send("session.finish")
    await expect_error(ev("input_audio_buffer.append", audio=b64), "after session.finish")
    await client.ws.close()
    # The deliberately valid ones (the first "dup", two images, finish) are no violations.
    assert len(sim.violations) == 14, sim.violations
    assert sim.appends == 1


async def test_session_finish_flushes_pending_speech_then_finished(sim: Simulator) -> None:
    client = await open_client(sim)
    await client.configure()
    await client.append(speech(0.8) + silence(0.2))  # speech still open: no response yet
    await client.send("session.finish")
    events = await client.until("session.finished")
    assert [e["type"] for e in events][-2:] == [
        "conversation.item.input_audio_transcription.completed",
        "session.finished",
    ]
    assert events[-2]["language"] == "zh"
    await client.ws.close()
    assert sim.violations == []
    assert sim.connections[0].finished


async def test_handshake_refusals_and_faults() -> None:
    async with Simulator(faults=Faults.parse("refuse=401x1"), api_key="k-123") as sim:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{sim.url}?model={MODEL}", additional_headers={"Authorization": "Bearer k-123"})
        assert refused.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as wrong_key:
            await connect(f"{sim.url}?model={MODEL}", additional_headers={"Authorization": "Bearer nope"})
        assert wrong_key.value.response.status_code == 401
        with pytest.raises(InvalidStatus) as no_model:
            await connect(
                f"{sim.url}?model=qwen-nonexistent", additional_headers={"Authorization": "Bearer k-123"}
            )
        assert no_model.value.response.status_code == 404
        async with connect(
            f"{sim.url}?model={MODEL}", additional_headers={"Authorization": "Bearer k-123"}
        ) as ws:
            assert json.loads(await ws.recv())["type"] == "session.created"
        assert sim.attempts == 4 and len(sim.connections) == 1


async def test_reject_update_fault_answers_error_and_no_violation(sim: Simulator) -> None:
    client = await open_client(sim, "&faults=reject_update=quota%20exhausted,reject_code=Arrearage")
    answer = await client.configure()
    assert answer["type"] == "error"
    assert answer["error"]["code"] == "Arrearage" and answer["error"]["message"] == "quota exhausted"
    await client.ws.close()
    assert sim.violations == []


async def test_stall_fault_never_answers(sim: Simulator) -> None:
    client = await open_client(sim, "&faults=stall")
    with pytest.raises(TimeoutError):
        await client.recv(within_s=0.5)
    await client.ws.close()


async def test_malformed_and_bursty_faults_still_complete_the_response(sim: Simulator) -> None:
    client = await open_client(sim, "&faults=malformed,bursty")
    await client.configure()
    await client.append(speech(0.5) + silence(0.7))
    frames: list[str | bytes] = []
    while True:
        raw = await asyncio.wait_for(client.ws.recv(), 10)
        frames.append(raw)
        if isinstance(raw, str) and '"response.done"' in raw:
            break
    undecodable = 0
    for raw in frames:
        try:
            parsed = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            undecodable += 1
            continue
        if not isinstance(parsed, dict) or "type" not in parsed:
            undecodable += 1
    assert undecodable >= 4
    await client.ws.close()


async def test_close_mid_response_fault() -> None:
    async with Simulator(faults=Faults(close_mid_response=True), pace_s=0.001) as sim:
        client = await open_client(sim)
        await client.configure()
        await client.append(speech(0.5) + silence(0.7))
        kinds = []
        with pytest.raises(Exception) as closed:
            while True:
                kinds.append((await client.recv())["type"])
        assert type(closed.value).__name__ == "ConnectionClosedError"
        assert kinds[-1] == "response.audio.delta" and "response.done" not in kinds


def test_endpointer_needs_enough_speech_then_silence() -> None:
    ep = Endpointer()
    assert ep.feed(speech(0.1) + silence(0.8)) == []  # a click is not an utterance
    assert ep.feed(speech(0.6) + silence(0.5)) == []  # not yet silent long enough
    ended = ep.feed(silence(0.2))
    assert len(ended) == 1 and ended[0].number == 1 and abs(ended[0].speech_s - 0.6) < 0.03
    assert ep.feed(silence(2.0)) == []


def test_cli_records_events_and_audio(tmp_path: Path) -> None:
    port = free_port()
    record = tmp_path / "events.jsonl"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = tolk_cmd("simulator", "--port", str(port), "--record", str(record))
    proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        line = proc.stderr.readline()
        while "listening on" not in line:
            assert line, "simulator exited before listening"
            line = proc.stderr.readline()

        async def talk() -> None:
            ws = await connect(f"ws://127.0.0.1:{port}/api-ws/v1/realtime?model={MODEL}")
            client = Client(ws)
            await client.configure()
            await client.append(speech(0.3))
            await client.send("session.finish")
            await client.until("session.finished")
            await ws.close()

        asyncio.run(talk())
        lines = [json.loads(x) for x in record.read_text().splitlines()]
        assert [x["type"] for x in lines] == ["session.update"] + ["input_audio_buffer.append"] * 3 + [
            "session.finish"
        ]
        assert all(x["audio"] == 3200 for x in lines[1:4])
        assert Path(f"{record}.pcm").read_bytes() == speech(0.3)[:9600]
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert "0 client violations" in err
