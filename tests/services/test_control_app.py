"""The control API in-process (httpx over ASGI): health rules, captions, config patch details."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomlkit

from daemon import config as config_mod
from daemon.backend import FALLBACK
from daemon.bus import PROCESSES
from daemon.messages import (
    Caption,
    ConfigChanged,
    EchoState,
    Heartbeat,
    Message,
    SessionStatus,
    SpeechActivity,
    Usage,
)
from services.control.api import create_app
from services.control.notice import notice
from services.control.status import DOWN_AFTER_S, ON_DEMAND_START_S, StatusAggregator
from services.control.status_cli import format_status
from services.control.store import ConfigStore, write_atomic


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ...]:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("TOLK_CONFIG", raising=False)
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path / "state"))
    cfg_file = tmp_path / "tolk.toml"
    cfg_file.write_text('[languages]\nsource = "zh"\ntarget = "en"\n', encoding="utf-8")
    clock = Clock()
    agg = StatusAggregator(PROCESSES, clock=clock)
    store = ConfigStore(config_mod.load(cfg_file), str(cfg_file))
    published: list[Message] = []
    app = create_app(agg, store, published.append, max_body_bytes=4096)
    return app, agg, store, clock, published, cfg_file


def client(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1")


def all_alive(agg: StatusAggregator, session_state: str = "live", last_error: str = "") -> None:
    for name in PROCESSES:
        agg.handle(Heartbeat(service=name, pid=100, state="ready", status=f"{name} fine"))
    agg.handle(SessionStatus(state=session_state, last_error=last_error))


async def test_health_names_what_is_wrong(setup: tuple[Any, ...]) -> None:
    app, agg, _, clock, _, _ = setup
    async with client(app) as http:
        first = await http.get("/health")
        assert first.status_code == 503
        assert "capture: no heartbeat received" in first.json()["reasons"]

        all_alive(agg)
        ok = await http.get("/health")
        assert (ok.status_code, ok.json()) == (200, {"ok": True, "reasons": []})

        clock.now += DOWN_AFTER_S + 0.5
        for name in PROCESSES:
            if name != "capture":
                agg.handle(Heartbeat(service=name, state="ready"))
        down = await http.get("/health")
        assert down.status_code == 503
        assert down.json()["reasons"] == [f"capture: no heartbeat for {DOWN_AFTER_S + 0.5:g} s"]

        agg.handle(Heartbeat(service="capture", state="ready"))
        agg.handle(Heartbeat(service="playback", state="failed", status="cannot open hw:1: No such device"))
        agg.handle(SessionStatus(state="failed", last_error="invalid API key"))
        bad = (await http.get("/health")).json()
        assert bad["reasons"] == [
            "playback: failed — cannot open hw:1: No such device",
            "session: failed — invalid API key",
        ]


async def test_session_backoff_is_healthy_but_a_stuck_connect_is_not(setup: tuple[Any, ...]) -> None:
    app, agg, _, clock, _, _ = setup
    async with client(app) as http:
        all_alive(agg, "backoff", last_error="connection refused")
        assert (await http.get("/health")).status_code == 200
        agg.handle(SessionStatus(state="connecting"))
        clock.now += 2
        all_alive(agg, "connecting")
        assert (await http.get("/health")).status_code == 200
        clock.now += 40
        all_alive(agg, "connecting")
        stuck = await http.get("/health")
        assert stuck.status_code == 503
        assert stuck.json()["reasons"] == ["session: connecting for 42 s"]


async def test_status_shows_captions_usage_and_config(setup: tuple[Any, ...]) -> None:
    app, agg, _, _, _, _ = setup
    all_alive(agg)
    agg.handle(Caption(utterance="u1", kind="source", text="你好", stash="世", language="zh"))
    agg.handle(Caption(utterance="u1", kind="translation", text="Hello", stash=" wor", language="en"))
    agg.handle(Usage(input_audio_tokens=125, audio_seconds_sent=10.0))
    async with client(app) as http:
        partial = (await http.get("/api/status")).json()
        assert partial["captions"][0]["source"] == {"text": "你好世", "final": False, "language": "zh"}
        assert partial["captions"][0]["translation"] == {"text": "Hello wor", "final": False, "language": "en"}
        assert partial["usage"]["input_audio_tokens"] == 125
        assert partial["config"] == {
            "api_key": "missing",  # never the key itself
            "api_key_from": "",
            "source": "zh",
            "target": "en",
            "modalities": ["text", "audio"],
            "voice": "Cherry",
            "camera": "none",
            "echo": "half-duplex",
            "listen": "127.0.0.1:8080",
        }

        agg.handle(Caption(utterance="u1", kind="translation", text="Hello world.", final=True, language="en"))
        # A late partial must not undo the final.
        agg.handle(Caption(utterance="u1", kind="translation", text="Hello", stash=" w", language="en"))
        final = (await http.get("/api/status")).json()["captions"][0]
        assert final["translation"] == {"text": "Hello world.", "final": True, "language": "en"}

        for i in range(2, 12):
            agg.handle(Caption(utterance=f"u{i}", kind="translation", text=f"line {i}", final=True))
        kept = (await http.get("/api/status")).json()["captions"]
        assert [c["utterance"] for c in kept] == [f"u{i}" for i in range(6, 12)]

    text = format_status((await client(app).get("/api/status")).json(), "http://127.0.0.1/api/status")
    assert "tolk OK" in text
    assert "line 11" in text
    assert "capture" in text and "up" in text
    assert "echo:" not in text  # half duplex: nothing to measure


async def test_status_reports_the_echo_canceller(setup: tuple[Any, ...]) -> None:
    """Capture's canceller figures in /api/status and ``tolk status``: not measured, then
    measured; and a canceller that could not start is said plainly."""
    app, agg, _, _, _, _ = setup
    all_alive(agg)
    async with client(app) as http:
        assert (await http.patch("/api/config", json={"audio": {"echo": "aec"}})).status_code == 200
        assert (await http.get("/api/status")).json()["echo"] is None  # capture has not said yet
        agg.handle(EchoState(cancelling=True, far_s=0.3, onset_guard_s=0.3))
        early = (await http.get("/api/status")).json()
        assert early["echo"]["cancelling"] is True and early["echo"]["erle_db"] is None
        assert "ERLE not measured yet" in format_status(early, "u")
        agg.handle(
            EchoState(cancelling=True, erle_db=38.5, far_s=12.0, double_talk_s=3.0, double_talk_ratio=0.25,
                      onset_guard_s=0.3, resyncs=1)
        )  # fmt: skip
        measured = (await http.get("/api/status")).json()
        assert measured["config"]["echo"] == "aec"
        assert measured["echo"] == {
            "cancelling": True, "erle_db": 38.5, "far_s": 12.0, "double_talk_s": 3.0,
            "double_talk_ratio": 0.25, "onset_guard_s": 0.3, "residual_s": 0.0, "resyncs": 1,
            "reference_late_s": 0.0,
        }  # fmt: skip
        line = "echo:    cancelled, ERLE 38.5 dB; the box spoke 12 s, someone over it 3 s"
        assert line in format_status(measured, "u")
        agg.handle(EchoState(cancelling=False))
        failed = (await http.get("/api/status")).json()
    assert failed["echo"]["cancelling"] is False
    assert "echo:    NOT cancelled" in format_status(failed, "u")


async def test_patch_merges_keeps_comments_and_null_removes(setup: tuple[Any, ...]) -> None:
    app, _, store, _, published, cfg_file = setup
    overlay = store.overlay
    overlay.parent.mkdir(parents=True)
    overlay.write_text('# installed by the venue\n[output]\n# staff prefer this one\nvoice = "Ethan"\n')
    store.replace(config_mod.load(cfg_file))  # as a reload (SIGHUP) would
    async with client(app) as http:
        r = await http.patch("/api/config", json={"languages": {"target": "ja"}})
        assert r.status_code == 200, r.text
        assert r.json()["languages"]["target"] == "ja"
        assert r.json()["output"]["effective_voice"] == "Ethan"
        text = overlay.read_text()
        assert "# installed by the venue" in text and "# staff prefer this one" in text
        assert tomlkit.parse(text).unwrap() == {"output": {"voice": "Ethan"}, "languages": {"target": "ja"}}
        assert [(type(m), m.sections) for m in published] == [(ConfigChanged, ["languages"])]

        r = await http.patch("/api/config", json={"output": {"voice": None}})
        assert r.status_code == 200
        assert r.json()["output"]["voice"] is None
        assert tomlkit.parse(overlay.read_text()).unwrap() == {"languages": {"target": "ja"}}
        assert [m.sections for m in published if isinstance(m, ConfigChanged)] == [["languages"], ["output"]]

        # The same value again: stored, but nothing to announce.
        r = await http.patch("/api/config", json={"languages": {"target": "ja"}})
        assert r.status_code == 200 and len(published) == 2
    assert config_mod.load(cfg_file).languages.target == "ja"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            {"service": {"api_key_file": "/etc/shadow"}},
            "service.api_key_file: secrets cannot be set over HTTP",
        ),
        ({"token": "abc"}, "token: secrets cannot be set over HTTP"),
        ({"output": {"modalities": ["audio"]}}, "output.modalities = ['audio']"),
        ({"camera": {"max_fps": 5}}, "camera.max_fps = 5"),
        ({"languages": "ja"}, "languages = 'ja'"),
        ({"output": {"voice": "Kiki"}}, "output.voice = 'Kiki' cannot speak"),
        ({"nonsense": {}}, "nonsense: unknown key in the top level"),
        ({"log": {"level": {}}}, "log.level = {}"),
    ],
)
async def test_patch_refusals_change_nothing(setup: tuple[Any, ...], body: dict[str, Any], needle: str) -> None:
    app, _, store, _, published, _ = setup
    async with client(app) as http:
        r = await http.patch("/api/config", json=body)
    if not needle:
        assert r.status_code == 200
        return
    assert r.status_code == 422, r.text
    assert any(needle in p for p in r.json()["problems"]), r.json()
    assert not store.overlay.exists()
    assert published == []
    assert store.current.languages.target == "en"


async def test_patch_bad_bodies(setup: tuple[Any, ...]) -> None:
    app, _, store, _, _, _ = setup
    async with client(app) as http:
        not_object = await http.patch("/api/config", json=["languages"])
        assert not_object.status_code == 422
        broken = await http.patch(
            "/api/config", content=b'{"languages": ', headers={"content-type": "application/json"}
        )
        assert broken.status_code == 422
        assert "JSON" in broken.text

        async def chunks() -> Any:
            for _ in range(10):
                yield b" " * 1000

        streamed = await http.patch("/api/config", content=chunks(), headers={"content-type": "application/json"})
        assert streamed.status_code == 413
        assert "larger than 4096 bytes" in streamed.text
        declared = await http.patch("/api/config", content=b" " * 5000, headers={"content-type": "application/json"})
        assert declared.status_code == 413
    assert not store.overlay.exists()


async def test_concurrent_patches_in_process_serialise(setup: tuple[Any, ...]) -> None:
    app, _, store, _, _, cfg_file = setup
    choices = [("ja", "Cherry"), ("zh", "Dylan"), ("yue", "Kiki"), ("fr", "Nofish")] * 3
    async with client(app) as http:
        results = await asyncio.gather(
            *(http.patch("/api/config", json={"languages": {"target": t}, "output": {"voice": v}}) for t, v in choices)
        )
    assert all(r.status_code == 200 for r in results)
    final = tomlkit.parse(store.overlay.read_text()).unwrap()
    assert (final["languages"]["target"], final["output"]["voice"]) in choices
    assert config_mod.load(cfg_file).output.voice == final["output"]["voice"]


async def test_openapi_describes_real_models(setup: tuple[Any, ...]) -> None:
    app = setup[0]
    async with client(app) as http:
        schema = (await http.get("/openapi.json")).json()
    assert {"/health", "/api/status", "/api/config"} <= set(schema["paths"])
    assert {"StatusReport", "PublicConfig", "ConfigRejected", "Health"} <= set(schema["components"]["schemas"])
    patch = schema["paths"]["/api/config"]["patch"]["responses"]
    assert {"200", "413", "422"} <= set(patch)


def test_write_atomic_replaces_keeps_mode_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    write_atomic(target, "a = 1\n")
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    os.chmod(target, 0o640)
    write_atomic(target, "a = 2\n")
    assert target.read_text() == "a = 2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


async def test_listener_leaves_the_signals_to_the_lifecycle(setup: tuple[Any, ...]) -> None:
    """uvicorn's serve() would take SIGTERM for itself; the service's lifecycle must keep it."""
    from services.control.http_server import HttpListener

    app = setup[0]
    loop = asyncio.get_running_loop()
    lifecycle_stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, lifecycle_stop.set)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    listener = HttpListener(app, f"127.0.0.1:{port}", logging.getLogger("test"))
    try:
        await listener.open(lambda coro, name: asyncio.create_task(coro, name=name))
        assert listener.serving()
        os.kill(os.getpid(), signal.SIGTERM)
        await asyncio.wait_for(lifecycle_stop.wait(), 2)
        await asyncio.sleep(0.3)
        assert listener.serving(), "the HTTP server reacted to SIGTERM by itself"
        assert await listener.probe()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)
        await listener.close()
    assert not listener.serving()


def test_a_degraded_process_is_up_but_not_healthy() -> None:
    from daemon.messages import Heartbeat
    from services.control.status import StatusAggregator

    now = [100.0]
    agg = StatusAggregator(clock=lambda: now[0])
    for name in ("capture", "camera", "session", "playback", "control"):
        state = "degraded" if name == "capture" else "ready"
        status = "waiting for device 'usbmic': No such file or directory" if name == "capture" else "ok"
        agg.handle(Heartbeat(service=name, state=state, status=status, pid=1))
    health = agg.health()
    assert not health.ok
    assert "capture: waiting for device 'usbmic': No such file or directory" in health.reasons
    assert agg.process_statuses()["capture"].up


def test_captions_leave_once_the_room_is_quiet() -> None:
    clock = Clock()
    agg = StatusAggregator(PROCESSES, clock=clock, captions_clear_s=30.0)
    agg.handle(Caption(utterance="u1", kind="translation", text="Hello.", final=True, language="en"))
    clock.now += 29.0
    assert [c.utterance for c in agg.captions()] == ["u1"]
    # Someone starts speaking before the 30 s: the words stay while the room is not quiet.
    agg.handle(SpeechActivity(speaking=True))
    clock.now += 60.0
    assert [c.utterance for c in agg.captions()] == ["u1"] and agg.captions_cleared == 0
    agg.handle(SpeechActivity(speaking=False))
    clock.now += 29.0
    assert agg.captions()  # quiet for 29 s since the speech ended
    clock.now += 1.0
    assert agg.captions() == [] and agg.captions_cleared == 1
    # 0 keeps them.
    agg.captions_clear_s = 0.0
    agg.handle(Caption(utterance="u2", kind="translation", text="Again.", final=True, language="en"))
    clock.now += 3600.0
    assert [c.utterance for c in agg.captions()] == ["u2"]


def test_the_privacy_notice_follows_the_languages_the_camera_and_the_owner() -> None:
    cfg = config_mod.validate({"languages": {"source": "ja", "target": "de"}})
    assert [line["language"] for line in notice(cfg, camera_on=False)] == ["ja", "de"]
    assert "Kamera" in notice(cfg, camera_on=True)[1]["text"]
    assert "Kamera" not in notice(cfg, camera_on=False)[1]["text"]
    thai = config_mod.validate({"languages": {"source": "th", "target": "en"}})
    assert [line["language"] for line in notice(thai, camera_on=False)] == ["en"]  # no Thai text: English
    own = config_mod.validate({"control": {"notice": "Recorded for quality."}})
    assert notice(own, camera_on=True) == [{"language": "", "text": "Recorded for quality."}]
    assert notice(config_mod.validate({"control": {"notice": ""}}), camera_on=True) == []


async def test_the_engine_is_expected_while_the_session_uses_it_and_idle_otherwise(setup: tuple[Any, ...]) -> None:
    """The engine starts on a connection and exits when idle (socket activation): control asks
    for it while the session says its backend is the engine, and shows it idle otherwise."""
    app, agg, _, clock, _, _ = setup
    async with client(app) as http:

        async def engine() -> dict[str, Any]:
            return dict((await http.get("/api/status")).json()["processes"]["engine"])

        def beat_the_others() -> None:
            for name in PROCESSES:
                agg.handle(Heartbeat(service=name, state="ready"))

        all_alive(agg)
        assert "engine" not in (await http.get("/api/status")).json()["processes"]
        agg.handle(Heartbeat(service="engine", pid=200, state="ready", status="serving"))
        assert (await engine())["pid"] == 200 and (await engine())["up"]
        agg.expect(PROCESSES)  # a config change keeps an engine it has heard
        agg.handle(Heartbeat(service="engine", pid=200, state="stopped", status="stopped"))  # idle: it exited
        assert (await engine())["state"] == "idle" and (await engine())["up"]
        assert (await http.get("/health")).status_code == 200

        # The cloud is unreachable: the session turns to the engine, which has a while to start.
        agg.handle(SessionStatus(state="connecting", backend=FALLBACK))
        clock.now += ON_DEMAND_START_S - 1
        beat_the_others()
        agg.handle(SessionStatus(state="live", backend=FALLBACK))
        assert (await http.get("/health")).status_code == 200
        clock.now += 2  # still stopped, and wanted now
        beat_the_others()
        down = await http.get("/health")
        assert down.status_code == 503
        assert down.json()["reasons"] == [f"engine: no heartbeat for {ON_DEMAND_START_S + 1:.1f} s"]
        agg.handle(Heartbeat(service="engine", pid=201, state="running", status="serving"))
        assert (await http.get("/health")).status_code == 200
        clock.now += DOWN_AFTER_S + 0.5  # it goes silent while the session uses it
        beat_the_others()
        down = await http.get("/health")
        assert down.status_code == 503
        assert down.json()["reasons"] == [f"engine: no heartbeat for {DOWN_AFTER_S + 0.5:g} s"]
        agg.handle(SessionStatus(state="live", backend="cloud"))  # the cloud is back: idle again
        assert (await http.get("/health")).status_code == 200 and (await engine())["state"] == "idle"
