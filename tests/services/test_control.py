"""``tolk service control`` as a real process: uvicorn socket, ZeroMQ ipc, NOTIFY_SOCKET, signals."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import tomlkit

from daemon import config as config_mod
from daemon.bus import Bus
from daemon.messages import Caption, ConfigChanged, Heartbeat, Message, SessionStatus
from services.control.status import DOWN_AFTER_S
from tests.helpers import NotifySocket, free_port, running, service_env, tolk_cmd, wait_until

SECRET = "sk-tolk-test-9f8e7d6c5b4a"
OTHERS = ("capture", "camera", "session", "playback")


@dataclass
class Control:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    config: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def control(rundir: Path, notify: NotifySocket) -> Iterator[Control]:
    port = free_port()
    cfg = rundir / "tolk.toml"
    # The processes FakeProcesses stands in for: a camera source, and no engine standing by.
    cfg.write_text(
        f'[languages]\nsource = "zh"\ntarget = "en"\n[service]\nfallback_after_s = 0\n'
        f'[camera]\nsource = "v4l2:/dev/video7"\n[control]\nlisten = "127.0.0.1:{port}"\n'
    )
    # A 2 s watchdog: control must pet it every second while its HTTP self-check passes.
    env = service_env(rundir, NOTIFY_SOCKET=notify.path, DASHSCOPE_API_KEY=SECRET, WATCHDOG_USEC="2000000")
    log = rundir / "control.log"
    with running(tolk_cmd("service", "control", "--config", str(cfg)), env, log) as proc:
        notify.wait_for("READY=1", timeout=15)
        yield Control(f"http://127.0.0.1:{port}", proc, log, cfg, env)


class FakeProcesses:
    """Test publishers named like the other services, heartbeating every 0.2 s from one thread.

    ZeroMQ sockets belong to one thread, so the Bus objects live and die in ``_run``. Every
    message is republished each tick: a subscriber that joins late (slow joiner) still sees it.
    """

    def __init__(self, rundir: Path, names: tuple[str, ...] = OTHERS) -> None:
        self.rundir = rundir
        self.alive = set(names)
        self.names = names
        self.session = SessionStatus(state="live", detail="connected")
        self.captions: list[Caption] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fake-processes", daemon=True)

    def __enter__(self) -> FakeProcesses:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        buses = {name: Bus(name, self.rundir) for name in self.names}
        try:
            while not self._stop.is_set():
                for name, bus in buses.items():
                    if name in self.alive:
                        bus.publish(Heartbeat(service=name, pid=4000 + len(name), state="ready", status=f"{name} ok"))
                if "session" in self.alive:
                    extra: list[Message] = [self.session, *self.captions]
                    for msg in extra:
                        msg.seq = 0
                        buses["session"].publish(msg)
                self._stop.wait(0.2)
        finally:
            for bus in buses.values():
                bus.close()


def get_json(url: str) -> tuple[int, Any]:
    r = httpx.get(url, timeout=5)
    return r.status_code, r.json()


def processes(ctl: Control) -> dict[str, dict[str, Any]]:
    _, data = get_json(f"{ctl.url}/api/status")
    return dict(data["processes"])


def test_ready_status_health_and_a_process_going_down(control: Control, rundir: Path, notify: NotifySocket) -> None:
    # READY=1 came from the fixture: the socket must already accept, with no retry.
    status, body = get_json(f"{control.url}/health")
    assert status == 503 and body["ok"] is False
    assert any("WATCHDOG=1" in m for m in notify.drain(1.5))

    with FakeProcesses(rundir) as fakes:
        fakes.captions = [
            Caption(utterance="u1", kind="source", text="你好", final=True, language="zh"),
            Caption(utterance="u1", kind="translation", text="Hello.", final=True, language="en"),
        ]
        wait_until(lambda: all(p["up"] for p in processes(control).values()), 10, what="all five processes up")
        procs = processes(control)
        assert procs["control"]["status"].startswith("serving on 127.0.0.1:")
        assert procs["capture"]["pid"] == 4007 and procs["capture"]["age_s"] < 1.5
        assert get_json(f"{control.url}/health") == (200, {"ok": True, "reasons": []})
        status_data = get_json(f"{control.url}/api/status")[1]
        assert status_data["session"]["state"] == "live"
        assert status_data["captions"][0]["translation"] == {"text": "Hello.", "final": True, "language": "en"}

        cli = subprocess.run(
            tolk_cmd("status", "--config", str(control.config)),
            env=control.env,
            capture_output=True,
            text=True,
        )
        assert cli.returncode == 0, cli.stderr
        assert "tolk OK" in cli.stdout and "你好 → Hello." in cli.stdout

        fakes.alive.discard("capture")
        t0 = time.monotonic()
        wait_until(lambda: processes(control)["capture"]["state"] == "down", 10, what="capture shown down")
        assert processes(control)["capture"]["up"] is False
        assert processes(control)["session"]["state"] == "ready"
        assert time.monotonic() - t0 > DOWN_AFTER_S - 0.5  # not before two heartbeats and a half were missed
        status, body = get_json(f"{control.url}/health")
        assert status == 503
        assert len(body["reasons"]) == 1 and body["reasons"][0].startswith("capture: no heartbeat for ")

        fakes.session = SessionStatus(state="failed", last_error="invalid API key")
        wait_until(lambda: "session: failed — invalid API key" in get_json(f"{control.url}/health")[1]["reasons"], 5)

        cli = subprocess.run(
            tolk_cmd("status", "--config", str(control.config)),
            env=control.env,
            capture_output=True,
            text=True,
        )
        assert cli.returncode == 0
        assert "NOT OK" in cli.stdout and "capture   DOWN" in cli.stdout

    # SIGHUP reloads and keeps serving; SIGTERM stops cleanly with exit 0.
    control.proc.send_signal(signal.SIGHUP)
    time.sleep(0.3)
    assert control.proc.poll() is None
    assert get_json(f"{control.url}/api/config")[0] == 200
    control.proc.send_signal(signal.SIGTERM)
    assert control.proc.wait(10) == 0
    unreachable = subprocess.run(
        tolk_cmd("status", "--config", str(control.config)), env=control.env, capture_output=True, text=True
    )
    assert unreachable.returncode == 1
    assert "not reachable" in unreachable.stderr


async def test_patch_persists_announces_and_never_shows_the_key(control: Control, rundir: Path) -> None:
    overlay = rundir / "state" / "config.toml"
    listener = Bus("observer", rundir)
    sub = listener.subscribe(["control"], Heartbeat, ConfigChanged)
    bodies: list[str] = []
    try:
        # Handshake against the slow joiner: once control's own heartbeat arrives, we are connected.
        first = await asyncio.wait_for(sub.recv(), 5)
        assert isinstance(first, Heartbeat) and first.service == "control"
        async with httpx.AsyncClient(base_url=control.url, timeout=5) as http:
            for path in ("/api/config", "/api/status", "/health", "/openapi.json"):
                bodies.append((await http.get(path)).text)
            assert "********" in json.loads(bodies[0])["service"]["api_key"]

            r = await http.patch("/api/config", json={"languages": {"target": "ja"}, "output": {"voice": "Nofish"}})
            bodies.append(r.text)
            assert r.status_code == 200, r.text
            assert r.json()["languages"]["target"] == "ja" and r.json()["output"]["effective_voice"] == "Nofish"

            changed = await asyncio.wait_for(_next(sub, ConfigChanged), 5)
            assert sorted(changed.sections) == ["languages", "output"]
            assert tomlkit.parse(overlay.read_text()).unwrap() == {
                "languages": {"target": "ja"},
                "output": {"voice": "Nofish"},
            }

            # control reloads itself from its own announcement.
            async def summary_target() -> str:
                return str((await http.get("/api/status")).json()["config"]["target"])

            for _ in range(50):
                if await summary_target() == "ja":
                    break
                await asyncio.sleep(0.1)
            assert await summary_target() == "ja"
            bodies.append((await http.get("/api/config")).text)
    finally:
        listener.close()

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TOLK_STATE_DIR", str(rundir / "state"))
        loaded = config_mod.load(control.config)
    assert (loaded.languages.target, loaded.output.voice) == ("ja", "Nofish")
    for body in bodies:
        assert SECRET not in body
    assert SECRET not in control.log_text()


def test_patch_refused_leaves_the_file_alone(control: Control, rundir: Path) -> None:
    overlay = rundir / "state" / "config.toml"
    ok = httpx.patch(f"{control.url}/api/config", json={"languages": {"source": "en"}}, timeout=5)
    assert ok.status_code == 200
    before = overlay.read_bytes()
    cases = [
        (
            {"languages": {"target": "th"}, "output": {"modalities": ["text", "audio"]}},
            ["output.modalities", "'th'", "text-only", '["text"]'],
        ),
        ({"languages": {"targt": "ja"}}, ["languages.targt", "unknown key", "did you mean 'target'"]),
        ({"languages": {"target": "jp"}}, ["languages.target = 'jp'", "use one of", "ja"]),
        ({"service": {"api_key": "sk-stolen"}}, ["service.api_key", "secrets cannot be set over HTTP"]),
        ({"service": {"url": "ws://10.0.0.1/x"}}, ["service.url", "'ws://10.0.0.1/x'", "clear text", "wss://"]),
    ]
    for body, needles in cases:
        r = httpx.patch(f"{control.url}/api/config", json=body, timeout=5)
        assert r.status_code == 422, (body, r.text)
        text = " ".join(r.json()["problems"])
        for needle in needles:
            assert needle in text, (needle, text)
        assert overlay.read_bytes() == before
    big = httpx.patch(
        f"{control.url}/api/config",
        content=b'{"languages": {"target": "ja"}, "pad": "' + b"x" * 70_000 + b'"}',
        headers={"content-type": "application/json"},
        timeout=5,
    )
    assert big.status_code == 413
    assert overlay.read_bytes() == before
    assert httpx.get(f"{control.url}/api/config", timeout=5).json()["languages"] == {
        "source": "en",
        "target": "en",
        "mode": "one-way",
        "direction": "auto",
        "expect_turns": True,
        "direction_buttons": [],
    }


def test_concurrent_patches_leave_one_valid_version(control: Control, rundir: Path) -> None:
    choices = [("ja", "Cherry"), ("zh", "Dylan"), ("yue", "Kiki"), ("fr", "Ethan"), ("ko", "Nofish")] * 2
    codes: list[int] = []

    def send(target: str, voice: str) -> None:
        body = {"languages": {"target": target}, "output": {"voice": voice}}
        codes.append(httpx.patch(f"{control.url}/api/config", json=body, timeout=10).status_code)

    threads = [threading.Thread(target=send, args=c) for c in choices]
    for t in threads:
        t.start()
    for t in threads:
        t.join(15)
    assert codes == [200] * len(choices)
    final = tomlkit.parse((rundir / "state" / "config.toml").read_text()).unwrap()
    assert (final["languages"]["target"], final["output"]["voice"]) in choices
    assert [p.name for p in (rundir / "state").iterdir()] == ["config.toml"]  # no temp files left
    served = httpx.get(f"{control.url}/api/config", timeout=5).json()
    assert (served["languages"]["target"], served["output"]["voice"]) == (
        final["languages"]["target"],
        final["output"]["voice"],
    )


def test_port_in_use_is_a_clear_error(rundir: Path, notify: NotifySocket) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cfg = rundir / "tolk.toml"
        cfg.write_text(f'[control]\nlisten = "127.0.0.1:{port}"\n')
        env = service_env(rundir, NOTIFY_SOCKET=notify.path)
        log = rundir / "control.log"
        with running(tolk_cmd("service", "control", "--config", str(cfg)), env, log) as proc:
            assert proc.wait(15) == 1
    text = log.read_text()
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in text
    assert not any("READY=1" in m for m in notify.drain(0.2) + notify.messages)


async def _next(sub: Any, cls: type[Message]) -> Any:
    while True:
        msg = await sub.recv()
        if isinstance(msg, cls):
            return msg


def test_listen_moves_without_a_restart(control: Control) -> None:
    new_port = free_port()
    r = httpx.patch(f"{control.url}/api/config", json={"control": {"listen": f"127.0.0.1:{new_port}"}}, timeout=5)
    assert r.status_code == 200, r.text
    moved = f"http://127.0.0.1:{new_port}"
    wait_until(lambda: _answers(f"{moved}/api/status"), 5, what="the API on the new port")
    wait_until(lambda: not _answers(f"{control.url}/api/status"), 5, what="the old port to close")
    procs = httpx.get(f"{moved}/api/status", timeout=5).json()["processes"]
    wait_until(lambda: _answers(f"{moved}/health"), 5)
    assert control.proc.poll() is None
    assert procs["control"]["pid"] == control.proc.pid


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code in (200, 503)
    except httpx.TransportError:
        return False
