"""The captions screen (`/`) in Chromium: captions put on the real bus show up, partials look
tentative, Arabic runs right to left, CJK uses CJK fonts, the banner follows the session (offline
mode on the box's own engine included), and
it reads well at the kiosk's 800x480 and at 1920x1080 (screenshots in test-artifacts/)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.messages import Caption, SessionStatus
from tests.helpers import NotifySocket
from tests.pages.conftest import FULL_HD, KIOSK, ControlProcess, FakeBox, start_control

ZH_HELLO = "你好，欢迎来到国家博物馆。"
EN_HELLO = "Hello, welcome to the National Museum."
ZH_PARTIAL, ZH_STASH = "这幅画创作于", "十六世纪"
EN_PARTIAL, EN_STASH = "This painting was made", " in the sixteenth"
AR_FINAL = "هذه اللوحة من القرن السادس عشر."
SOME_KEY = "sk-screen-test-key-0b7d"


@pytest.fixture
def control(rundir: Path, notify: NotifySocket) -> Iterator[ControlProcess]:
    # A key is set: the cloud is in use (the privacy notice shows), and a refusal is of that key.
    yield from start_control(rundir, notify, '[languages]\nsource = "zh"\ntarget = "en"\n', DASHSCOPE_API_KEY=SOME_KEY)


def _style(page: Any, selector: str, prop: str) -> str:
    return str(page.eval_on_selector(selector, f"el => getComputedStyle(el).{prop}"))


def test_captions_on_screen(browser: Any, control: ControlProcess, rundir: Path, artifacts: Path) -> None:
    page = browser.new_page(viewport=KIOSK)
    try:
        page.goto(control.url + "/")
        # Nothing runs yet: the screen says so plainly instead of showing a blank page.
        banner = page.locator("#banner")
        banner.get_by_text("Translation offline").wait_for(timeout=5000)
        assert "error" in (banner.get_attribute("class") or "")
        page.screenshot(path=str(artifacts / "captions-offline-800x480.png"))

        with FakeBox(rundir) as box:
            box.captions = [
                Caption(utterance="u1", kind="source", text=ZH_HELLO, final=True, language="zh"),
                Caption(utterance="u1", kind="translation", text=EN_HELLO, final=True, language="en"),
                Caption(utterance="u2", kind="source", text=ZH_PARTIAL, stash=ZH_STASH, language="zh"),
                Caption(utterance="u2", kind="translation", text=EN_PARTIAL, stash=EN_STASH, language="en"),
            ]
            newest = page.locator('[data-utterance="u2"] .translation')
            newest.get_by_text(EN_PARTIAL + EN_STASH).wait_for(timeout=10000)
            page.wait_for_function("document.getElementById('banner').hidden", timeout=5000)
            # The privacy notice, in the visitor's languages; no camera in use.
            lines = page.locator("#notice .notice-line")
            assert lines.count() == 2 and lines.nth(0).get_attribute("lang") == "zh-Hans"
            assert "云端翻译服务" in lines.nth(0).inner_text() and "cloud translation" in lines.nth(1).inner_text()
            assert page.locator("#camera-on").is_hidden()

            # Source above translation, newest at the bottom, the older one faded.
            first = page.locator('[data-utterance="u1"]')
            assert first.locator(".source").inner_text() == ZH_HELLO
            assert first.locator(".translation").inner_text() == EN_HELLO
            assert "older" in (first.get_attribute("class") or "")
            src_box = page.locator('[data-utterance="u2"] .source').bounding_box()
            tr_box = newest.bounding_box()
            assert src_box["y"] + src_box["height"] <= tr_box["y"] + 1

            # Partials are visibly tentative; finals are not.
            assert "partial" in (newest.get_attribute("class") or "")
            assert _style(page, '[data-utterance="u2"] .translation', "fontStyle") == "italic"
            assert _style(page, '[data-utterance="u1"] .translation', "fontStyle") == "normal"
            assert _style(page, '[data-utterance="u2"] .translation', "color") != _style(
                page, '[data-utterance="u1"] .translation', "color"
            )
            # Big enough to read from two metres even on the 7" panel.
            assert float(_style(page, '[data-utterance="u2"] .translation', "fontSize").removesuffix("px")) >= 36
            # Chinese is tagged so the CJK font draws it; the header names both languages.
            assert page.locator('[data-utterance="u1"] .source').get_attribute("lang") == "zh-Hans"
            assert "Noto Sans CJK SC" in _style(page, '[data-utterance="u1"] .source', "fontFamily")
            assert page.locator("#source-name").inner_text() == "中文"
            page.screenshot(path=str(artifacts / "captions-800x480.png"))

            page.set_viewport_size(FULL_HD)
            assert float(_style(page, '[data-utterance="u2"] .translation', "fontSize").removesuffix("px")) >= 80
            page.screenshot(path=str(artifacts / "captions-1920x1080.png"))

            # The final replaces the partial; an Arabic translation runs right to left.
            box.captions[3] = Caption(utterance="u2", kind="translation", text=EN_PARTIAL + " in 1540.", final=True)
            box.captions.append(Caption(utterance="u3", kind="translation", text=AR_FINAL, final=True, language="ar"))
            arabic = page.locator('[data-utterance="u3"] .translation')
            arabic.get_by_text(AR_FINAL).wait_for(timeout=10000)
            assert arabic.get_attribute("dir") == "rtl"
            assert _style(page, '[data-utterance="u3"] .translation', "direction") == "rtl"
            assert _style(page, '[data-utterance="u3"] .translation', "textAlign") in ("start", "right")
            done = page.locator('[data-utterance="u2"] .translation')
            done.get_by_text(EN_PARTIAL + " in 1540.").wait_for(timeout=5000)
            assert "final" in (done.get_attribute("class") or "")
            page.screenshot(path=str(artifacts / "captions-arabic-1920x1080.png"))

            # A refused key is said in words on the screen itself.
            box.session = SessionStatus(
                state="failed",
                last_error="the service refused the API key (HTTP 401): check the key and its region ([service] url)",
            )
            banner.get_by_text("Wrong API key").wait_for(timeout=5000)
            page.set_viewport_size(KIOSK)
            page.screenshot(path=str(artifacts / "captions-wrong-key-800x480.png"))

            box.session = SessionStatus(state="backoff", last_error="network: connection refused")
            banner.get_by_text("Offline — reconnecting…").wait_for(timeout=5000)

            # The cloud unreachable for long: the box's own engine translates, and the screen says so.
            box.session = SessionStatus(state="live", backend="local-fallback")
            banner.get_by_text("Offline mode — translating on this box").wait_for(timeout=5000)
            assert "info" in (banner.get_attribute("class") or "")
            page.screenshot(path=str(artifacts / "captions-offline-mode-800x480.png"))
            box.session = SessionStatus(state="live", backend="cloud")
            page.wait_for_function("document.getElementById('banner').hidden", timeout=5000)
    finally:
        page.close()


def test_what_was_said_leaves_the_screen_when_the_room_is_quiet(
    browser: Any, rundir: Path, notify: NotifySocket, artifacts: Path
) -> None:
    config = '[languages]\nsource = "zh"\ntarget = "en"\n[control]\ncaptions_clear_s = 2\n'
    for control in start_control(rundir, notify, config):
        page = browser.new_page(viewport=KIOSK)
        try:
            page.goto(control.url + "/")
            with FakeBox(rundir) as box:
                box.captions = [Caption(utterance="u1", kind="translation", text=EN_HELLO, final=True, language="en")]
                page.locator('[data-utterance="u1"] .translation').get_by_text(EN_HELLO).wait_for(timeout=10000)
                box.captions = []  # nobody speaks any more
                page.wait_for_function("!document.querySelector('.utterance')", timeout=8000)
                status = httpx.get(control.url + "/api/status", timeout=5).json()
                assert status["captions"] == []
                page.screenshot(path=str(artifacts / "captions-cleared-800x480.png"))
        finally:
            page.close()


def test_a_visitor_chooses_a_language_on_the_screen(
    browser: Any, rundir: Path, notify: NotifySocket, artifacts: Path
) -> None:
    config = '[languages]\nsource = "zh"\ntarget = "en"\n[control]\nvisitor_languages = ["en", "ja", "de", "ar"]\n'
    for control in start_control(rundir, notify, config, DASHSCOPE_API_KEY=SOME_KEY):
        with FakeBox(rundir):
            for size, name in ((KIOSK, "800x480"), (FULL_HD, "1920x1080")):
                page = browser.new_page(viewport=size)
                try:
                    page.goto(control.url + "/")
                    row = page.locator("#visitor .visitor-language")
                    row.first.wait_for(timeout=10000)
                    assert [row.nth(i).get_attribute("data-language") for i in range(row.count())] == [
                        "en", "ja", "de", "ar"]  # fmt: skip
                    assert row.nth(0).get_attribute("aria-pressed") == "true"  # the current target
                    assert row.nth(1).get_attribute("lang") == "ja" and row.nth(1).inner_text() != "ja"
                    page.locator("#notice .notice-line").first.wait_for(timeout=5000)
                    with page.expect_response("**/api/visitor-language") as answer:
                        row.nth(1).click()
                    assert answer.value.status == 202, answer.value.text()
                    assert "translating into ja" in answer.value.json()["detail"]
                    page.screenshot(path=str(artifacts / f"captions-visitor-languages-{name}.png"))
                finally:
                    page.close()
