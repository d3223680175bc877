"""The API key entered over HTTP: ``PUT /api/key`` stores it (0600, never shown again), the
session connects with it at once; bad keys and strangers are refused, the installer's key wins."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon import config as config_mod
from daemon.messages import KEY_SECTION, ConfigChanged
from services.simulator import running_in_thread
from tests.helpers import NotifySocket, running, service_env, tolk_cmd, wait_until
from tests.pages.conftest import start_control
from tests.services.control_rig import control_app

KEY = "sk-entered-on-the-page-7c3e91"
TOKEN = "tolk-ctl-key-test-2e8f"


def _client(app: Any, host: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


async def test_a_key_is_stored_0600_and_never_shown(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _store, published = control_app(tmp_path, monkeypatch, "127.0.0.1:8080")
    stored = tmp_path / "state" / config_mod.STORED_KEY_NAME
    async with _client(app, "127.0.0.1:8080") as http:
        assert (await http.get("/api/status")).json()["config"]["api_key"] == "missing"
        for bad in ("", 12, "sk-two\nlines-key", "sk with spaces", None, "short"):
            refused = await http.put("/api/key", json={"api_key": bad})
            assert refused.status_code == 422, (bad, refused.text)
            assert refused.json()["problems"] and not stored.exists()
        assert (await http.put("/api/key", json={"key": KEY})).status_code == 422
        assert published == []

        put = await http.put("/api/key", json={"api_key": KEY})
        assert put.status_code == 204 and put.content == b""
        assert stored.read_text().strip() == KEY
        assert stat.S_IMODE(stored.stat().st_mode) == 0o600
        assert [m.sections for m in published if isinstance(m, ConfigChanged)] == [[KEY_SECTION]]
        status = (await http.get("/api/status")).json()["config"]
        assert (status["api_key"], status["api_key_from"]) == ("set", config_mod.STORED_KEY_ORIGIN)
        answers = [await http.get(path) for path in ("/api/config", "/api/status", "/metrics", "/", "/admin")]
        assert all(a.status_code == 200 for a in answers) and not any(KEY in a.text for a in answers)
        assert not (tmp_path / "state" / config_mod.OVERLAY_NAME).exists()  # never in the config overlay

        assert (await http.delete("/api/key")).status_code == 204
        assert not stored.exists()
        assert (await http.get("/api/status")).json()["config"]["api_key"] == "missing"


async def test_off_loopback_the_key_needs_the_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _store, published = control_app(tmp_path, monkeypatch, "127.0.0.2:8080", TOKEN)
    stored = tmp_path / "state" / config_mod.STORED_KEY_NAME
    async with _client(app, "127.0.0.2:8080") as http:
        assert (await http.put("/api/key", json={"api_key": KEY})).status_code == 401
        assert (await http.delete("/api/key")).status_code == 401
        assert not stored.exists() and published == []
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        assert (await http.put("/api/key", json={"api_key": KEY}, headers=bearer)).status_code == 204


async def test_the_installers_key_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _store, _published = control_app(tmp_path, monkeypatch, "127.0.0.1:8080")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / config_mod.CREDENTIAL_NAME).write_text("sk-from-the-installer-1")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    async with _client(app, "127.0.0.1:8080") as http:
        refused = await http.put("/api/key", json={"api_key": KEY})
        assert refused.status_code == 409 and "credential dashscope-api-key" in refused.json()["problems"][0]
        assert not (tmp_path / "state" / config_mod.STORED_KEY_NAME).exists()
        assert (await http.get("/api/status")).json()["config"]["api_key_from"] == "credential dashscope-api-key"


def test_the_session_connects_with_a_key_entered_at_once(rundir: Path, notify: NotifySocket) -> None:
    with running_in_thread(api_key=KEY) as sim:
        config = (
            '[languages]\nsource = "zh"\ntarget = "en"\n\n'
            f'[service]\nbackend = "cloud"\nurl = "{sim.url}"\nconnect_timeout_s = 3\nfinish_timeout_s = 3\n'
        )
        for control in start_control(rundir, notify, config):
            url = control.url
            env = service_env(rundir)
            cmd = tolk_cmd("service", "session", "--config", str(control.config))
            session_log = rundir / "session.log"
            with running(cmd, env, session_log):
                # No key: the simulator refuses the handshake, and the session waits for a person.
                state = _wait_for_state(url, "failed")
                assert "401" in state["last_error"] and sim.attempts >= 1, state
                connections = len(sim.connections)

                put = httpx.put(url + "/api/key", json={"api_key": KEY}, timeout=5)
                assert put.status_code == 204, put.text
                live = _wait_for_state(url, "live")
                assert live["state"] == "live"
                assert len(sim.connections) == connections + 1
                assert sim.connections[-1].authorization == f"Bearer {KEY}"
            for log in (control.log, session_log):
                assert KEY not in log.read_text(), log


def _wait_for_state(url: str, state: str) -> dict[str, Any]:
    return dict(wait_until(lambda: (s := _session(url)) and s["state"] == state and s, 15, 0.1, f"session {state}"))


def _session(url: str) -> dict[str, Any] | None:
    try:
        status = httpx.get(url + "/api/status", timeout=2).json()
    except httpx.HTTPError:
        return None
    session = status.get("session")
    return dict(session) if session and session.get("state") not in (None, "unknown", "starting") else None


