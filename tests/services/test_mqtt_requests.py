"""A request from the broker reaches control over real ZeroMQ buses even when control is not
listening yet: the mqtt side sends it again (same id) until answered, and control applies it once.

Control subscribes to the mqtt process with a two-second reconnect interval (daemon.bus.SOMETIMES),
so after either of them starts there is a while in which a bus message from mqtt is lost; a staff
member's ``config/set`` arriving then must still be applied, and exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from daemon import config as config_mod
from daemon.bus import Bus
from daemon.messages import RemoteAnswer, RemoteCommand, RemotePatch
from services.control.commands import CommandDesk
from services.control.remote import RemoteDesk
from services.control.store import ConfigStore
from services.mqtt.link import Incoming
from services.mqtt.remote import ANSWER_TIMEOUT_S, Requests
from services.mqtt.topics import Topics
from tests.helpers import rmtree, short_tmpdir


class _Replies:
    """The broker side of the mqtt process, kept: what it would publish on ``…/config/result``."""

    def __init__(self) -> None:
        self.sent: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    def publish(self, topic: str, payload: str, correlation: bytes | None = None) -> None:
        self.sent.put_nowait((topic, json.loads(payload)))


@pytest.fixture
def rundir() -> Iterator[Path]:
    path = short_tmpdir("tkrq")
    (path / "state").mkdir()
    (path / "tolk.toml").write_text('[languages]\nsource = "zh"\ntarget = "en"\n')
    yield path
    rmtree(path)


@contextlib.asynccontextmanager
async def _mqtt_side(rundir: Path) -> AsyncIterator[tuple[Requests, _Replies]]:
    bus = Bus("mqtt", rundir)
    replies = _Replies()
    topics = Topics("box-q", "tolk/box-q", "homeassistant", None)
    requests = Requests(topics, replies, bus.publish, logging.getLogger("test"))  # type: ignore[arg-type]
    answers = bus.subscribe(["control"], RemoteAnswer)

    async def hear() -> None:
        async for msg in answers:
            if isinstance(msg, RemoteAnswer):
                requests.answered(msg)

    tasks = [asyncio.create_task(requests.serve()), asyncio.create_task(hear())]
    try:
        yield requests, replies
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        bus.close()


@contextlib.asynccontextmanager
async def _control_side(rundir: Path) -> AsyncIterator[tuple[RemoteDesk, list[dict]]]:
    bus = Bus("control", rundir)
    config = rundir / "tolk.toml"
    store = ConfigStore(config_mod.load(config), str(config), overlay=rundir / "state" / "config.toml")
    desk = RemoteDesk(store, CommandDesk(bus.publish), bus.publish)
    applied: list[dict] = []
    patch = desk.patch

    async def counted(msg: RemotePatch) -> RemoteAnswer:
        applied.append(msg.changes)
        return await patch(msg)

    desk.patch = counted  # type: ignore[method-assign]
    task = asyncio.create_task(desk.serve(bus.subscribe(["mqtt"], RemotePatch, RemoteCommand)))
    try:
        yield desk, applied
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        bus.close()


async def test_a_request_made_before_control_listens_is_applied_once(rundir: Path) -> None:
    async with _mqtt_side(rundir) as (requests, replies):
        requests.take(Incoming("tolk/box-q/config/set", b'{"languages": {"target": "ja"}}', retain=False))
        await asyncio.sleep(1.5)  # sent at least once into the void: nobody listens yet
        assert replies.sent.empty()
        async with _control_side(rundir) as (_desk, applied):
            topic, result = await asyncio.wait_for(replies.sent.get(), ANSWER_TIMEOUT_S)
            await asyncio.sleep(2.5)  # the repeats control got meanwhile are answered, not applied
    assert topic == "tolk/box-q/config/result"
    assert result == {"ok": True, "changed": ["languages"], "detail": "applied: languages"}
    assert applied == [{"languages": {"target": "ja"}}]
    assert "ja" in (rundir / "state" / "config.toml").read_text()
    assert replies.sent.empty()  # one answer to staff, not one per repeat


async def test_with_no_control_the_request_is_answered_as_not_delivered(rundir: Path) -> None:
    async with _mqtt_side(rundir) as (requests, replies):
        requests.take(Incoming("tolk/box-q/config/set", b'{"languages": {"target": "ja"}}', retain=False))
        _topic, result = await asyncio.wait_for(replies.sent.get(), ANSWER_TIMEOUT_S + 5)
    assert result["ok"] is False and result["error"] == "not delivered"
    assert not (rundir / "state" / "config.toml").exists()
