"""Requests from the fleet's broker (the mqtt process): config changes and commands, answered on the bus.

The same code path as the HTTP API, not a copy: a ``RemotePatch`` goes through ``apply_patch``
as ``PATCH /api/config`` does (the same validation and refusals, stored in the same overlay,
announced by the same ``ConfigChanged``), and a ``RemoteCommand`` through the same
``CommandDesk`` as ``POST /api/mute`` (answered by the process that carries it out). Each request
gets one ``RemoteAnswer`` with its id. Requests are taken one at a time, in order: two changes
from the broker apply as they were sent. The mqtt process sends a request again until it hears the
answer (a bus message can be lost while the two find each other); a repeated id is answered with
the answer it had, from memory, and not applied again.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Callable

from daemon.bus import Subscriber
from daemon.messages import Message, RemoteAnswer, RemoteCommand, RemotePatch
from services.control.commands import CARRIERS, CommandDesk, Refused, Undelivered
from services.control.store import ConfigStore, OverlayUnreadable, PatchRejected, apply_patch

#: The processes whose requests control takes.
REMOTE_SOURCES = ("mqtt",)
#: Answers kept for repeated requests: the mqtt process asks one request at a time.
REMEMBERED = 32

log = logging.getLogger("tolk.control")


class RemoteDesk:
    def __init__(self, store: ConfigStore, desk: CommandDesk, publish: Callable[[Message], None]) -> None:
        self.store = store
        self.desk = desk
        self.publish = publish
        self.handled = 0
        self._answers: OrderedDict[str, RemoteAnswer] = OrderedDict()

    async def serve(self, sub: Subscriber) -> None:
        """Answer each request from ``sub`` until cancelled."""
        async for msg in sub:
            if not isinstance(msg, RemotePatch | RemoteCommand):
                continue
            answer = self._answers.get(msg.id) if msg.id else None
            if answer is None:
                answer = await (self.patch(msg) if isinstance(msg, RemotePatch) else self.command(msg))
                self.handled += 1
                self._remember(answer)
            self.publish(dataclasses.replace(answer, seq=0))

    def _remember(self, answer: RemoteAnswer) -> None:
        if answer.id:
            self._answers[answer.id] = answer
            while len(self._answers) > REMEMBERED:
                self._answers.popitem(last=False)

    async def patch(self, msg: RemotePatch) -> RemoteAnswer:
        try:
            changed = await apply_patch(self.store, self.publish, msg.changes)
        except PatchRejected as exc:
            log.info("config change from the fleet refused: %s", exc)
            return RemoteAnswer(id=msg.id, ok=False, error="config refused", problems=exc.problems)
        except OverlayUnreadable as exc:
            return RemoteAnswer(id=msg.id, ok=False, error="stored config unreadable", problems=[str(exc)])
        if changed:
            log.info("config changed from the fleet: %s", ", ".join(sorted(changed)))
        detail = f"applied: {', '.join(sorted(changed))}" if changed else "nothing to change"
        return RemoteAnswer(id=msg.id, detail=detail, changed=sorted(changed))

    async def command(self, msg: RemoteCommand) -> RemoteAnswer:
        if msg.name == "" or msg.name not in CARRIERS:
            unknown = f"unknown command {msg.name!r}: use one of {', '.join(CARRIERS)}"
            return RemoteAnswer(id=msg.id, ok=False, error="command refused", problems=[unknown])
        try:
            ack = await self.desk.send(msg.name, msg.args)
        except Undelivered as exc:
            return RemoteAnswer(id=msg.id, ok=False, error="command not delivered", problems=[str(exc)])
        except Refused as exc:
            return RemoteAnswer(id=msg.id, ok=False, error="command refused", problems=[str(exc)])
        return RemoteAnswer(id=msg.id, detail=ack.detail)
