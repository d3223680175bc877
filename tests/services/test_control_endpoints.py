"""The box's endpoints in-process: languages, commands, metrics, and the captions WebSocket
over a real uvicorn socket with a real WebSocket client."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from daemon import config as config_mod
from daemon.bus import PROCESSES
from daemon.messages import (
    Caption,
    Command,
    CommandAck,
    EchoState,
    Heartbeat,
    Message,
    PlaybackState,
    SessionStatus,
    SpeechActivity,
    Usage,
)
from services.control.api import create_app
from services.control.http_server import HttpListener
from services.control.status import StatusAggregator
from services.control.store import ConfigStore
from tests.helpers import AnsweringBus, free_port


@pytest.fixture
def parts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, StatusAggregator, list[Message]]:
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("TOLK_CONFIG", raising=False)
    agg = StatusAggregator(PROCESSES)
    bus = AnsweringBus(agg)
    app = create_app(agg, ConfigStore(config_mod.Config(), None), bus)
    return app, agg, bus.published


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


async def test_languages_are_the_seed_table(parts: tuple[Any, ...]) -> None:
    async with client(parts[0]) as http:
        table = (await http.get("/api/languages")).json()
    by_code = {lang["code"]: lang for lang in table["languages"]}
    assert len(by_code) == 18 and all(lang["source"] for lang in by_code.values())
    assert table["audio_targets"] == ["en", "zh", "ru", "fr", "de", "pt", "es", "it", "ko", "ja", "yue"]
    assert sorted(table["text_only_targets"]) == sorted(["id", "vi", "th", "ar", "hi", "el", "tr"])
    assert by_code["th"] == {
        "code": "th", "name": "Thai", "source": True, "audio": False, "voices": [], "default_voice": None
    }  # fmt: skip
    assert by_code["yue"]["voices"] == ["Kiki"] and by_code["yue"]["default_voice"] == "Kiki"
    assert by_code["zh"]["voices"] == ["Cherry", "Nofish", "Ethan", "Jada", "Dylan", "Sunny", "Peter", "Eric"]
    assert by_code["en"]["voices"] == ["Cherry", "Nofish", "Ethan"]
    voices = {v["name"]: v["languages"] for v in table["voices"]}
    assert voices["Kiki"] == ["yue"] and voices["Dylan"] == ["zh"] and "ko" in voices["Cherry"]
    assert table["modalities"] == [["text"], ["text", "audio"]]
    # The offline engine's own table: every source into English, en <-> pt, nothing else.
    engine = {(p["source"], p["target"]): p for p in table["engine_pairs"]}
    assert all((code, "en") in engine for code in by_code) and ("en", "pt") in engine and ("pt", "en") in engine
    assert ("en", "ja") not in engine and engine[("de", "en")]["voice"] == "piper"


async def test_commands_go_on_the_bus(parts: tuple[Any, ...]) -> None:
    app, _, published = parts
    async with client(app) as http:
        for path in ("/api/mute", "/api/unmute", "/api/speaker-test", "/api/session/restart"):
            r = await http.post(path)
            assert r.status_code == 202 and r.json()["sent"] is True
        assert (await http.get("/api/mute")).status_code == 405
    assert [m.name for m in published if isinstance(m, Command)] == [
        "mute", "unmute", "speaker-test", "restart-session"
    ]  # fmt: skip
    assert len({m.id for m in published if isinstance(m, Command)}) == 4  # each answered by its own id


async def test_a_command_nobody_carries_out_is_a_503_not_a_202(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Capture is down (restarting): the mute reaches no one, and the operator is told so."""
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path / "state"))
    agg = StatusAggregator(PROCESSES)
    bus = AnsweringBus(agg, silent=("mute",))
    app = create_app(agg, ConfigStore(config_mod.Config(), None), bus, command_timeout_s=0.3)
    async with client(app) as http:
        r = await http.post("/api/mute")
        assert r.status_code == 503, r.text
        assert "capture did not answer 'mute'" in r.json()["error"]
        assert (await http.post("/api/speaker-test")).status_code == 202  # playback answers


async def test_a_command_the_process_refuses_is_a_409_with_its_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path / "state"))
    agg = StatusAggregator(PROCESSES)

    def refusing(msg: Message) -> None:
        if isinstance(msg, Command):
            agg.handle(CommandAck(id=msg.id, name=msg.name, ok=False, detail="no speaker is open: degraded"))

    app = create_app(agg, ConfigStore(config_mod.Config(), None), refusing)
    async with client(app) as http:
        r = await http.post("/api/speaker-test")
    assert r.status_code == 409 and "no speaker is open: degraded" in r.json()["error"], r.text


async def test_metrics_in_prometheus_text(parts: tuple[Any, ...]) -> None:
    app, agg, _ = parts
    counters = {
        "capture": {"chunks": 500, "overruns": 2, "reopens": 1},
        "session": {"chunks_sent": 100, "backlog_dropped": 7, "reconnects": 3},
        "playback": {"chunks_played": 90, "dropped_chunks": 4, "underruns": 5, "latency_ms_p50": 42.0},
    }
    for name in PROCESSES:
        agg.handle(Heartbeat(service=name, state="running", counters=counters.get(name, {})))
    agg.handle(EchoState(cancelling=True, erle_db=41.5, far_s=20.0, double_talk_s=4.5))
    agg.handle(SessionStatus(state="live"))
    agg.handle(Usage(input_audio_tokens=1250, output_audio_tokens=600, output_text_tokens=40, tokens_per_hour=9000))
    # One utterance: speech ends, 1.2 s later the first caption, 2.0 s later the speaker starts.
    end = time.monotonic_ns()
    agg.handle(SpeechActivity(speaking=False, t=end))
    agg.handle(Caption(utterance="u1", kind="translation", text="Hel", t=end + 1_200_000_000))
    agg.handle(Caption(utterance="u1", kind="translation", text="Hello", t=end + 1_500_000_000))
    agg.handle(PlaybackState(state="started", t=end + 2_000_000_000))
    agg.handle(PlaybackState(state="started", t=end + 9_000_000_000))  # no new speech end: not counted
    async with client(app) as http:
        r = await http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }
    assert samples[("tolk_up", (("process", "capture"),))] == 1.0
    assert samples[("tolk_audio_chunks_total", (("process", "capture"),))] == 500
    assert samples[("tolk_audio_chunks_total", (("process", "session"),))] == 100
    assert samples[("tolk_audio_dropped_chunks_total", (("process", "playback"),))] == 4
    assert samples[("tolk_playback_underruns_total", (("process", "playback"),))] == 5
    assert samples[("tolk_capture_overruns_total", (("process", "capture"),))] == 2
    assert samples[("tolk_session_reconnects_total", (("process", "session"),))] == 3
    assert samples[("tolk_echo_cancelling", ())] == 1.0
    assert samples[("tolk_echo_erle_db", ())] == 41.5
    assert samples[("tolk_echo_far_seconds_total", ())] == 20.0
    assert samples[("tolk_echo_double_talk_seconds_total", ())] == 4.5
    assert samples[("tolk_session_state", (("state", "live"),))] == 1.0
    assert samples[("tolk_session_state", (("state", "backoff"),))] == 0.0
    assert samples[("tolk_tokens_total", (("direction", "in"), ("kind", "audio")))] == 1250
    assert samples[("tolk_tokens_total", (("direction", "out"), ("kind", "text")))] == 40
    assert samples[("tolk_tokens_per_hour", ())] == 9000
    assert samples[("tolk_playback_latency_p50_seconds", ())] == pytest.approx(0.042)
    assert samples[("tolk_speech_end_to_caption_seconds_count", ())] == 1
    assert samples[("tolk_speech_end_to_caption_seconds_sum", ())] == pytest.approx(1.2)
    assert samples[("tolk_speech_end_to_speaker_seconds_count", ())] == 1
    assert samples[("tolk_speech_end_to_speaker_seconds_bucket", (("le", "2.0"),))] == 1
    assert samples[("tolk_speech_end_to_speaker_seconds_bucket", (("le", "1.5"),))] == 0

    agg.handle(Heartbeat(service="capture", state="failed"))
    async with client(app) as http:
        text = (await http.get("/metrics")).text
    assert 'tolk_up{process="capture"} 0.0' in text


@pytest.fixture
async def served(parts: tuple[Any, ...]) -> AsyncIterator[tuple[str, StatusAggregator]]:
    app, agg, _ = parts
    listen = f"127.0.0.1:{free_port()}"
    listener = HttpListener(app, listen, logging.getLogger("test"))
    await listener.open(lambda coro, name: asyncio.create_task(coro, name=name))
    try:
        yield listen, agg
    finally:
        await listener.close()


async def _next(ws: Any, kind: str) -> dict[str, Any]:
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
        if msg["type"] == kind:
            return dict(msg)


async def test_captions_stream(served: tuple[str, StatusAggregator]) -> None:
    listen, agg = served
    for name in PROCESSES:
        agg.handle(Heartbeat(service=name, state="ready"))
    agg.handle(SessionStatus(state="live"))
    agg.handle(Caption(utterance="u1", kind="source", text="你好", final=True, language="zh"))
    agg.handle(Caption(utterance="u1", kind="translation", text="Hello.", final=True, language="en"))
    async with connect(f"ws://{listen}/api/captions") as ws:
        state = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert state["type"] == "state" and (state["source"], state["target"]) == ("zh", "en")
        assert state["banner"] == {"level": "ok", "text": "", "detail": ""}
        assert state["captions"][0]["translation"] == {"text": "Hello.", "final": True, "language": "en"}

        agg.handle(Caption(utterance="u2", kind="translation", text="How are", stash=" you", language="en"))
        partial = (await _next(ws, "caption"))["caption"]
        assert partial["utterance"] == "u2"
        assert partial["translation"] == {"text": "How are you", "final": False, "language": "en"}
        agg.handle(Caption(utterance="u2", kind="translation", text="How are you?", final=True, language="en"))
        assert (await _next(ws, "caption"))["caption"]["translation"]["final"] is True

        t0 = time.monotonic()
        agg.handle(SessionStatus(state="failed", last_error="the service refused the API key (HTTP 401): check"))
        screen = await _next(ws, "screen")
        assert time.monotonic() - t0 < 0.5  # pushed at once, not at the next periodic check
        assert screen["banner"]["level"] == "error" and screen["banner"]["text"] == "Wrong API key"
        agg.handle(SessionStatus(state="backoff", last_error="network: connection refused"))
        assert (await _next(ws, "screen"))["banner"]["text"] == "Offline — reconnecting…"
        # Refused with no key set at all (the session says so): the missing key is what staff must fix.
        no_key = "no API key: enter it on the admin page, or set … (refused: the service refused the API key)"
        agg.handle(SessionStatus(state="failed", last_error=no_key))
        missing = await _next(ws, "screen")
        assert missing["banner"]["text"] == "No API key set" and "admin page" in missing["banner"]["detail"]

    # A page of another site may not read the stream (the handshake is refused).
    with pytest.raises(InvalidStatus) as refused:
        async with connect(f"ws://{listen}/api/captions", origin="http://evil.example"):  # type: ignore[arg-type]
            pass
    assert refused.value.response.status_code == 403
