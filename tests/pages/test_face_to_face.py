"""Conversation mode's captions screen in Chromium: face to face, the far half upside down, each
half showing what the other person said in its reader's language, and hold-to-talk buttons
that reach the real control process (screenshots in test-artifacts/)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from daemon.messages import Caption
from tests.helpers import NotifySocket, wait_until
from tests.pages.conftest import FULL_HD, KIOSK, ControlProcess, FakeBox, start_control

ZH_SAID = "请问去火车站怎么走？"
EN_OF_ZH = "Excuse me, how do I get to the train station?"
EN_SAID = "Go straight and turn left at the second corner."
ZH_OF_EN = "一直走，在第二个路口左转。"
CONVERSATION = '[languages]\nsource = "zh"\ntarget = "en"\nmode = "conversation"\n'


@pytest.fixture
def control(rundir: Path, notify: NotifySocket) -> Iterator[ControlProcess]:
    yield from start_control(rundir, notify, CONVERSATION)


def test_face_to_face_layout(browser: Any, control: ControlProcess, rundir: Path, artifacts: Path) -> None:
    with FakeBox(rundir) as box:
        box.captions = [
            Caption(utterance="u1", kind="source", text=ZH_SAID, final=True, language="zh"),
            Caption(utterance="u1", kind="translation", text=EN_OF_ZH, final=True, language="en"),
            Caption(utterance="u2", kind="source", text=EN_SAID, final=True, language="en"),
            Caption(utterance="u2", kind="translation", text=ZH_OF_EN, final=True, language="zh"),
        ]
        for viewport, name in ((KIOSK, "800x480"), (FULL_HD, "1920x1080")):
            page = browser.new_page(viewport=viewport)
            try:
                sent: list[dict[str, Any]] = []
                page.on(
                    "request",
                    lambda r, sent=sent: (
                        sent.append(json.loads(r.post_data or "{}")) if r.url.endswith("/api/direction") else None
                    ),
                )
                page.goto(control.url + "/")
                far, near = page.locator(".side.far"), page.locator(".side.near")
                far.get_by_text(EN_OF_ZH).wait_for(timeout=10000)
                near.get_by_text(ZH_OF_EN).wait_for(timeout=10000)
                assert page.locator("#captions").is_hidden() and page.locator(".langs").is_hidden()
                # The English reader sits across the box: that half is turned upside down.
                assert far.evaluate("el => getComputedStyle(el).transform") == "matrix(-1, 0, 0, -1, 0, 0)"
                assert near.evaluate("el => getComputedStyle(el).transform") == "none"
                # Each half holds only what the other person said, in its reader's language.
                assert ZH_OF_EN not in far.inner_text() and EN_OF_ZH not in near.inner_text()
                far_box, near_box = far.bounding_box(), near.bounding_box()
                assert far_box and near_box and far_box["y"] + far_box["height"] <= near_box["y"] + 1
                assert abs(far_box["height"] - near_box["height"]) < 0.05 * viewport["height"]
                # Both halves fit the screen; the translation is big enough to read across a desk.
                assert near_box["y"] + near_box["height"] <= viewport["height"] + 1
                size = float(near.locator(".translation").evaluate("el => parseFloat(getComputedStyle(el).fontSize)"))
                assert size >= 0.045 * viewport["height"]
                buttons = {b.get_attribute("data-direction"): b for b in page.locator(".talk").all()}
                assert buttons["a-to-b"].inner_text() == "中文" and buttons["b-to-a"].inner_text() == "English"
                page.screenshot(path=str(artifacts / f"captions-face-to-face-{name}.png"))

                # Hold to talk: pressed sends this side's direction, released lets go ("auto").
                button = near.locator(".talk")
                with page.expect_response(lambda r: r.url.endswith("/api/direction")) as pressed:
                    button.dispatch_event("pointerdown", {"pointerId": 1, "isPrimary": True})
                assert pressed.value.status == 202
                assert "held" in (button.get_attribute("class") or "")
                with page.expect_response(lambda r: r.url.endswith("/api/direction")) as released:
                    button.dispatch_event("pointerup", {"pointerId": 1, "isPrimary": True})
                assert released.value.status == 202
                assert sent == [{"direction": "a-to-b"}, {"direction": "auto"}]
            finally:
                page.close()


def _sides(control: ControlProcess) -> tuple[str, str]:
    languages = httpx.get(control.url + "/api/config", timeout=5).json()["languages"]
    return languages["mode"], languages["direction"]


def test_staff_fix_the_direction_on_the_admin_page(browser: Any, control: ControlProcess) -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    try:
        page.goto(control.url + "/admin")
        page.wait_for_selector("body[data-ready='true']", timeout=10000)
        assert page.locator("#conversation").input_value() == "auto"
        for choice, mode, direction in (("b-to-a", "conversation", "b-to-a"), ("one-way", "one-way", "b-to-a")):
            page.select_option("#conversation", choice)
            with page.expect_response(lambda r: r.url.endswith("/api/config") and r.request.method == "PATCH"):
                page.click("#save")
            # The page shows what it saved (and refills its form) before the next choice is made.
            page.wait_for_function("document.querySelector('#message strong')?.textContent === 'Saved'")
            page.wait_for_selector("#save:not([disabled])")
            # Saved through PATCH /api/config, as the file's keys [languages] mode and direction.
            wait_until(lambda mode=mode, direction=direction: _sides(control) == (mode, direction), 5, what=choice)
            page.evaluate("document.querySelector('#message').replaceChildren()")
    finally:
        page.close()
