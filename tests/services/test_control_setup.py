"""First boot: the admin page's address and QR code on the screen, and the one-time setup code
that stands in for the control token once, off loopback, until a key is set."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from daemon import config as config_mod
from services.control.security import COOKIE
from services.control.setup import SetupCode, admin_url, view
from tests.services.control_rig import control_app

TOKEN = "tolk-ctl-setup-5e1"
KEY = "sk-setup-test-key-77"


def test_the_code_is_good_once() -> None:
    code = SetupCode()
    assert not code.redeem("1234-5678")
    issued = code.issue()
    assert len(issued) == 9 and issued[4] == "-"
    assert not code.redeem("0000-0000" if issued != "0000-0000" else "1111-1111")
    assert code.redeem(issued) and not code.redeem(issued) and code.code is None


def test_the_view_shows_the_way_to_the_admin_page_until_a_key_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    monkeypatch.setenv("TOLK_STATE_DIR", "/nonexistent-tolk-state")
    code = SetupCode()
    code.issue()
    cfg = config_mod.validate({"control": {"listen": "0.0.0.0:8080", "token_file": "/x"}})
    shown = view(cfg, code, has_key=False)
    assert shown is not None and shown["url"].startswith("http://") and shown["url"].endswith(":8080/admin")
    assert "0.0.0.0" not in shown["url"] and shown["qr"].startswith("<svg") and shown["code"] == code.code
    assert admin_url("127.0.0.1:9000") == "http://127.0.0.1:9000/admin"
    offline = config_mod.validate({"service": {"backend": "local"}})
    assert view(offline, code, has_key=False) is None  # offline only: no key needed
    assert view(cfg, code, has_key=True) is None


async def test_off_loopback_the_code_opens_the_admin_page_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    app, _store, _published = control_app(tmp_path, monkeypatch, "127.0.0.2:8080", TOKEN)
    code = app.state.setup.issue()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.2:8080") as http:
        assert (await http.get("/admin")).status_code == 401
        assert (await http.get("/admin?setup=9999-9999")).status_code == 401
        login = await http.get(f"/admin?setup={code}")
        assert login.status_code == 303 and COOKIE in login.headers["set-cookie"]
        assert (await http.get("/admin")).status_code == 200  # the cookie it set
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.2:8080") as stranger:
        assert (await stranger.get(f"/admin?setup={code}")).status_code == 401  # spent
    # A key set over the page ends the way in for good.
    code = app.state.setup.issue()
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.2:8080") as http:
        assert (await http.put("/api/key", json={"api_key": KEY}, headers=bearer)).status_code == 204
        assert (await http.get(f"/admin?setup={code}")).status_code == 401
