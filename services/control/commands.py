"""Commands to the processes, each answered by the process that carries it out.

A ``Command`` on the bus is fire-and-forget: published while capture restarts, it reaches no one,
and the operator was told 202 all the same. So every command the API sends carries an id, the
carrying process answers it (``CommandAck``, on its state socket, which the status aggregator
hears), and the API waits for that answer: no answer within ``ACK_TIMEOUT_S`` is a 503 that
names the process, a refusal (``ok`` false) a 409 with its reason.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any

from daemon.messages import Command, CommandAck, CommandName, Message

#: A running process answers within milliseconds; this covers a busy box, not a restart.
ACK_TIMEOUT_S = 3.0

#: Which process carries out each command (and so answers it).
CARRIERS: dict[CommandName, str] = {
    "mute": "capture",
    "unmute": "capture",
    "speaker-test": "playback",
    "restart-session": "session",
    "direction": "session",
    "visitor-language": "session",
}


class Undelivered(Exception):
    """Nobody answered: the process is not running, or not on the bus."""


class Refused(Exception):
    """The process answered that it could not carry the command out."""


class CommandDesk:
    def __init__(self, publish: Callable[[Message], None], timeout_s: float = ACK_TIMEOUT_S) -> None:
        self.publish = publish
        self.timeout_s = timeout_s
        self._waiting: dict[str, asyncio.Future[CommandAck]] = {}

    def observe(self, msg: Message, _now: float) -> None:
        """A status observer: an answer settles the request waiting for it."""
        if isinstance(msg, CommandAck) and (waiting := self._waiting.get(msg.id)) and not waiting.done():
            waiting.set_result(msg)

    async def send(self, name: CommandName, args: dict[str, Any] | None = None) -> CommandAck:
        """Publish the command and return its answer; Undelivered or Refused when there is none."""
        ident = secrets.token_hex(8)
        answer: asyncio.Future[CommandAck] = asyncio.get_running_loop().create_future()
        self._waiting[ident] = answer  # before publishing: an answer may come at once
        try:
            self.publish(Command(name=name, args=args or {}, id=ident))
            ack = await asyncio.wait_for(answer, self.timeout_s)
        except TimeoutError:
            carrier = CARRIERS.get(name, "the process it concerns")
            raise Undelivered(
                f"{carrier} did not answer {name!r} within {self.timeout_s:.0f} s (is it running? see /api/status): "
                "the command may not have been carried out"
            ) from None
        finally:
            del self._waiting[ident]
        if not ack.ok:
            raise Refused(f"{CARRIERS.get(name, 'the process')} could not carry out {name!r}: {ack.detail}")
        return ack
