"""``config/set`` and ``command`` from the broker: checked for what only MQTT can get wrong, handed
to control over the bus, and answered on ``config/result`` and ``command/result``.

Control applies them on the HTTP API's own path (services/control/remote.py): a patch is
validated and stored as ``PATCH /api/config`` is, a command answered by the process that carries
it out. Here only what is particular to MQTT is refused:

- a retained request (the broker would hand it over again at every reconnect, for ever);
- a payload that is not a JSON object, or larger than the HTTP API takes;
- ``[mqtt]`` itself (a mistake would cut the box off from the broker that could undo it);
- a command other than ``mute``, ``unmute``, ``restart-session``.

Requests are answered one at a time, in the order they came; a backlog beyond ``QUEUE_MAX`` is
refused at once rather than answered minutes late. A request is sent again, with the same id, every
``RESEND_S`` until control answers: control hears this process again up to two seconds after either
of them starts (the bus's reconnect interval for a sometimes-process), and a bus message sent before
that is lost. Control answers a repeated id from memory, so nothing is applied twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import secrets
from collections.abc import Callable
from typing import Any

from daemon.messages import Message, RemoteAnswer, RemoteCommand, RemotePatch
from services.mqtt.link import BrokerLink, Incoming
from services.mqtt.topics import COMMANDS, Topics

#: As the HTTP API's body limit: a config change is a few hundred bytes.
MAX_PAYLOAD_BYTES = 64 * 1024
#: Control answers within milliseconds, a command within its carrier's 3 s; beyond this it is not there.
ANSWER_TIMEOUT_S = 10.0
#: Twice within the bus's reconnect interval for this process (daemon.bus.RARE_RECONNECT_MS, 2 s).
RESEND_S = 1.0
QUEUE_MAX = 16


class Requests:
    def __init__(
        self, topics: Topics, link: BrokerLink, publish: Callable[[Message], None], log: logging.Logger
    ) -> None:
        self.topics = topics
        self.link = link
        self.publish = publish
        self.log = log
        self._queue: asyncio.Queue[Incoming] = asyncio.Queue(QUEUE_MAX)
        self._waiting: dict[str, asyncio.Future[RemoteAnswer]] = {}
        self.counters = {"config_requests": 0.0, "commands": 0.0, "requests_refused": 0.0}

    def take(self, incoming: Incoming) -> None:
        """A request from the broker: queued for ``serve()``, or refused when too many wait."""
        try:
            self._queue.put_nowait(incoming)
        except asyncio.QueueFull:
            self._reply(incoming, _refusal("busy", f"more than {QUEUE_MAX} requests are waiting; send it again"))

    def answered(self, msg: RemoteAnswer) -> None:
        if (waiting := self._waiting.get(msg.id)) is not None and not waiting.done():
            waiting.set_result(msg)

    async def serve(self) -> None:
        while True:
            incoming = await self._queue.get()
            result = await self._handle(incoming)
            self._reply(incoming, result)

    # --- one request -----------------------------------------------------------------------------

    async def _handle(self, incoming: Incoming) -> dict[str, Any]:
        is_command = incoming.topic == self.topics.command
        self.counters["commands" if is_command else "config_requests"] += 1
        if incoming.retain:
            return self._refused(
                "retained request",
                f"{incoming.topic} was retained: the broker would hand it over again at every reconnect; "
                "publish it without the retain flag (and clear it: an empty retained message)",
            )
        if len(incoming.payload) > MAX_PAYLOAD_BYTES:
            return self._refused("request too large", f"larger than {MAX_PAYLOAD_BYTES} bytes")
        if is_command:
            return await self._command(incoming.payload)
        return await self._patch(incoming.payload)

    async def _patch(self, payload: bytes) -> dict[str, Any]:
        try:
            changes = json.loads(payload)
        except ValueError as exc:
            return self._refused("config refused", f"not JSON: {exc}")
        if not isinstance(changes, dict):
            example = '{"languages": {"target": "ja"}}'
            return self._refused("config refused", f"send a JSON object shaped as the config, e.g. {example}")
        if "mqtt" in changes:
            return self._refused(
                "config refused",
                "mqtt: [mqtt] cannot be changed over MQTT (a mistake would cut the box off from this broker); "
                "change it in the config file or with PATCH /api/config",
            )
        answer = await self._ask(RemotePatch(id=secrets.token_hex(8), changes=changes))
        if answer.ok:
            return {"ok": True, "changed": answer.changed, "detail": answer.detail}
        return self._refused(answer.error, *answer.problems)

    async def _command(self, payload: bytes) -> dict[str, Any]:
        name = _command_name(payload)
        if name not in COMMANDS:
            return self._refused("command refused", f"{name!r} is not a command: use one of {', '.join(COMMANDS)}")
        answer = await self._ask(RemoteCommand(id=secrets.token_hex(8), name=name))  # type: ignore[arg-type]
        if answer.ok:
            return {"ok": True, "command": name, "detail": answer.detail}
        return {"command": name, **self._refused(answer.error, *answer.problems)}

    async def _ask(self, request: RemotePatch | RemoteCommand) -> RemoteAnswer:
        """Control's answer to ``request``; a refusal of our own when none comes."""
        answer: asyncio.Future[RemoteAnswer] = asyncio.get_running_loop().create_future()
        self._waiting[request.id] = answer  # before publishing: an answer may come at once
        try:
            async with asyncio.timeout(ANSWER_TIMEOUT_S):
                while True:
                    # A fresh message each time (its own bus sequence number), the same request id.
                    self.publish(dataclasses.replace(request, seq=0))
                    with contextlib.suppress(TimeoutError):
                        return await asyncio.wait_for(asyncio.shield(answer), RESEND_S)
        except TimeoutError:
            return RemoteAnswer(
                id=request.id,
                ok=False,
                error="not delivered",
                problems=[f"control did not answer within {ANSWER_TIMEOUT_S:.0f} s (is it running?): "
                          "it may or may not have been applied"],
            )  # fmt: skip
        finally:
            del self._waiting[request.id]

    def _refused(self, error: str, *problems: str) -> dict[str, Any]:
        self.counters["requests_refused"] += 1
        return _refusal(error, *problems)

    def _reply(self, incoming: Incoming, result: dict[str, Any]) -> None:
        topic = self.topics.command_result if incoming.topic == self.topics.command else self.topics.config_result
        if not result["ok"]:
            self.log.info("%s refused: %s", incoming.topic, "; ".join(result["problems"]))
        self.link.publish(topic, json.dumps(result, ensure_ascii=False), correlation=incoming.correlation)


def _refusal(error: str, *problems: str) -> dict[str, Any]:
    return {"ok": False, "error": error, "problems": list(problems)}


def _command_name(payload: bytes) -> str:
    """``mute``, or ``{"command": "mute"}``."""
    text = payload.decode("utf-8", "replace").strip()
    if text.startswith("{"):
        try:
            body = json.loads(text)
        except ValueError:
            return text[:40]
        return str(body.get("command", "")) if isinstance(body, dict) else text[:40]
    return text[:40]
