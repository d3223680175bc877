"""Who may change the box: the token on a LAN bind, Origin and Host checks, no secret in answers.

"LAN bind" in code means any listen host other than 127.0.0.1, ::1 or localhost, so these
tests use 127.0.0.2 (loopback-range, reachable only from this machine) to stand in for one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from daemon import config as config_mod
from daemon.messages import Command, Message
from services.control.api import create_app
from services.control.security import COOKIE, AccessPolicy, is_loopback_bind, load_token
from services.control.status import StatusAggregator
from services.control.store import ConfigStore
from tests.helpers import AnsweringBus, NotifySocket, free_port, running, service_env, tolk_cmd
from tests.services.control_rig import control_app

TOKEN = "tolk-ctl-4b1d9e27a0"
API_KEY = "sk-tolk-never-shown-55aa"


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, ConfigStore, list[Message]]:
    """The app as on a LAN bind, with a token."""
    return control_app(tmp_path, monkeypatch, "127.0.0.2:8080", TOKEN)


def client(app: Any, host: str = "127.0.0.2:8080") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=f"http://{host}")


def test_what_counts_as_a_lan_bind() -> None:
    assert all(is_loopback_bind(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "LOCALHOST"))
    assert not any(is_loopback_bind(h) for h in ("127.0.0.2", "0.0.0.0", "::", "", "192.168.1.20", "kiosk.local"))
    assert AccessPolicy("127.0.0.2:8080").problem() is not None
    assert AccessPolicy("127.0.0.2:8080", TOKEN).problem() is None
    assert AccessPolicy("127.0.0.1:8080").problem() is None


async def test_writes_on_a_lan_bind_need_the_token(box: tuple[Any, ConfigStore, list[Message]]) -> None:
    app, store, published = box
    async with client(app) as http:
        refused = await http.patch("/api/config", json={"languages": {"target": "ja"}})
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        assert "token" in refused.json()["problems"][0]
        wrong = await http.patch(
            "/api/config", json={"languages": {"target": "ja"}}, headers={"Authorization": "Bearer nope"}
        )
        assert wrong.status_code == 401
        for path in ("/api/mute", "/api/unmute", "/api/speaker-test", "/api/session/restart"):
            assert (await http.post(path)).status_code == 401, path
        assert not store.overlay.exists() and published == []

        bearer = {"Authorization": f"Bearer {TOKEN}"}
        ok = await http.patch("/api/config", json={"languages": {"target": "ja"}}, headers=bearer)
        assert ok.status_code == 200, ok.text
        assert (await http.post("/api/mute", headers=bearer)).status_code == 202
        assert [m.name for m in published if isinstance(m, Command)] == ["mute"]
        assert TOKEN not in ok.text


async def test_what_people_said_is_private_on_a_lan_bind(box: tuple[Any, ConfigStore, list[Message]]) -> None:
    app, _, _ = box
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with client(app) as http:
        for path in ("/api/status", "/api/config", "/api/languages", "/metrics"):
            refused = await http.get(path)
            assert refused.status_code == 401, path
            assert "token" in refused.json()["problems"][0]
            assert (await http.get(path, headers={"Authorization": "Bearer nope"})).status_code == 401, path
            assert (await http.get(path, headers=bearer)).status_code == 200, path
        # Nothing private: the pages' files and the health answer.
        assert (await http.get("/")).status_code == 200
        assert (await http.get("/static/captions.js")).status_code == 200
        assert (await http.get("/health")).status_code in (200, 503)
        # A screen elsewhere opens /?token= once; its cookie reads the captions from then on.
        login = await http.get(f"/?token={TOKEN}")
        assert login.status_code == 303 and login.headers["location"] == "/"
        assert (await http.get("/api/status")).status_code == 200
    # The box's own screen: a browser on loopback that names the box as loopback.
    async with client(app, "127.0.0.1:8080") as local:
        assert (await local.get("/api/status")).status_code == 200
        assert (await local.get("/admin")).status_code == 401  # the admin page always asks
        assert (await local.patch("/api/config", json={"languages": {"target": "ja"}})).status_code == 401
    async with client(app, "evil.example:8080") as rebound:
        assert (await rebound.get("/api/status")).status_code == 401


async def test_the_admin_page_takes_the_token_once_and_keeps_a_cookie(box: tuple[Any, ...]) -> None:
    app, store, _ = box
    async with client(app) as http:
        page = await http.get("/admin")
        assert page.status_code == 401 and "needs the control token" in page.text
        assert (await http.get("/admin?token=wrong")).status_code == 401

        login = await http.get(f"/admin?token={TOKEN}")
        assert login.status_code == 303 and login.headers["location"] == "/admin"
        set_cookie = login.headers["set-cookie"]
        assert "httponly" in set_cookie.lower() and "samesite=strict" in set_cookie.lower()
        assert TOKEN not in set_cookie  # the cookie is derived from the token, never the token
        assert len(http.cookies[COOKIE]) == 64  # kept by this client, sent from now on

        page = await http.get("/admin")
        assert page.status_code == 200 and "<title>tolk — admin</title>" in page.text
        saved = await http.patch(
            "/api/config", json={"languages": {"source": "de"}}, headers={"Origin": "http://127.0.0.2:8080"}
        )
        assert saved.status_code == 200, saved.text
    async with client(app) as forger:
        forger.cookies.set(COOKIE, "0" * 64)
        assert (await forger.get("/admin")).status_code == 401
        forged = await forger.patch("/api/config", json={"languages": {"source": "fr"}})
        assert forged.status_code == 401
    assert store.current.languages.source == "de"


async def test_cross_site_writes_and_foreign_hosts_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOLK_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("TOLK_CONFIG", raising=False)
    store = ConfigStore(config_mod.Config(), None)
    status = StatusAggregator()
    bus = AnsweringBus(status)
    published: list[Message] = bus.published
    app = create_app(status, store, bus)  # loopback: no token
    body = {"languages": {"target": "ja"}}
    async with client(app, "127.0.0.1:8080") as http:
        for headers in (
            {"Origin": "http://evil.example"},
            {"Origin": "http://127.0.0.1:9999"},  # another port is another site's page
            {"Origin": "null"},
            {"Sec-Fetch-Site": "cross-site"},
        ):
            r = await http.patch("/api/config", json=body, headers=headers)
            assert r.status_code == 403, (headers, r.text)
            assert r.json()["error"] == "cross-site request refused"
            assert (await http.post("/api/session/restart", headers=headers)).status_code == 403
        assert not store.overlay.exists() and published == []

        # DNS rebinding: a foreign name pointing at 127.0.0.1 gets nothing, not even reads.
        rebound = await http.get("/api/status", headers={"Host": "evil.example:8080"})
        assert rebound.status_code == 403 and "not this box" in rebound.text

        same = await http.patch("/api/config", json=body, headers={"Origin": "http://127.0.0.1:8080"})
        assert same.status_code == 200
        assert (await http.get("/", headers={"Host": "localhost:8080"})).status_code == 200


async def test_a_lan_address_without_a_token_is_refused_over_http(box: tuple[Any, ...], tmp_path: Path) -> None:
    from services.control.service import _listen_needs_token

    app, store, _ = box
    store.vet = _listen_needs_token
    async with client(app) as http:
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        r = await http.patch("/api/config", json={"control": {"listen": "0.0.0.0:8080"}}, headers=bearer)
        assert r.status_code == 422
        assert "no control token is set" in r.json()["problems"][0]
        sneaky = await http.patch("/api/config", json={"control": {"token_file": "/tmp/x"}}, headers=bearer)
        assert sneaky.status_code == 422 and "secrets cannot be set over HTTP" in sneaky.text
    assert not store.overlay.exists()


def test_token_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert load_token(config_mod.Config()) == (None, "not set")
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "control-token").write_text(TOKEN + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert load_token(config_mod.Config()) == (TOKEN, "credential control-token")
    own = tmp_path / "token"
    own.write_text("from-file-token\n")
    cfg = config_mod.validate({"control": {"token_file": str(own)}})
    assert load_token(cfg) == ("from-file-token", f"file {own}")


def test_a_real_lan_bind(rundir: Path, notify: NotifySocket) -> None:
    """The process itself: no token, no start; with one, writes need it; secrets never shown."""
    port = free_port()
    cfg = rundir / "tolk.toml"
    cfg.write_text(f'[control]\nlisten = "127.0.0.2:{port}"\n')
    env = service_env(rundir, NOTIFY_SOCKET=notify.path, DASHSCOPE_API_KEY=API_KEY)
    log = rundir / "control.log"
    with running(tolk_cmd("service", "control", "--config", str(cfg)), env, log) as proc:
        assert proc.wait(15) == 1
    assert "is not loopback, and no control token is set" in log.read_text()
    assert not any("READY=1" in m for m in notify.drain(0.2))

    token_file = rundir / "control-token"
    token_file.write_text(TOKEN + "\n")
    cfg.write_text(f'[control]\nlisten = "127.0.0.2:{port}"\ntoken_file = "{token_file}"\n')
    url = f"http://127.0.0.2:{port}"
    with running(tolk_cmd("service", "control", "--config", str(cfg)), env, log):
        notify.wait_for("READY=1", timeout=15)
        bearer = {"Authorization": f"Bearer {TOKEN}"}
        for p in ("/api/config", "/api/status"):
            assert httpx.get(f"{url}{p}", timeout=5).status_code == 401, p
        bodies = [httpx.get(f"{url}{p}", headers=bearer, timeout=5).text for p in ("/api/config", "/api/status")]
        bodies.append(httpx.get(f"{url}/openapi.json", timeout=5).text)
        # The captions stream is a read of what people say: the token there too.
        with pytest.raises(InvalidStatus) as caught:
            ws_connect(f"ws://127.0.0.2:{port}/api/captions", open_timeout=5).close()
        assert caught.value.response.status_code == 403
        with ws_connect(f"ws://127.0.0.2:{port}/api/captions", additional_headers=bearer, open_timeout=5) as ws:
            assert ws.protocol.state.name == "OPEN"
        refused = httpx.patch(f"{url}/api/config", json={"languages": {"target": "ja"}}, timeout=5)
        assert refused.status_code == 401
        assert httpx.post(f"{url}/api/speaker-test", timeout=5).status_code == 401
        ok = httpx.patch(
            f"{url}/api/config",
            json={"languages": {"target": "ja"}},
            headers={"Authorization": f"Bearer {TOKEN}"},
            timeout=5,
        )
        assert ok.status_code == 200 and ok.json()["languages"]["target"] == "ja"
        login = httpx.get(f"{url}/admin?token={TOKEN}", timeout=5)
        bodies += [refused.text, ok.text, login.text, str(login.headers)]
    for text in [*bodies, log.read_text()]:
        assert TOKEN not in text and API_KEY not in text
