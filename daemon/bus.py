"""The socket layout of tolk's ZeroMQ bus.

Every service binds two PUB sockets in the runtime directory and nothing else:

    ipc://{runtime_dir}/{service}.bulk    audio and video (AudioIn, AudioOut, VideoFrame)
    ipc://{runtime_dir}/{service}.state   small messages (heartbeats, captions, state, config)

Subscribers connect to the publishers they need. There is no broker to fail, the sockets
live in one runtime directory shared by all units (so a restarted publisher rebinds the
same path and its subscribers reconnect by themselves), and nothing listens on a network
interface. High-water marks are bounded everywhere: a slow reader loses the oldest-not-yet-sent
audio rather than growing memory; a stale audio chunk is worth less than a fresh one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable
from pathlib import Path

import zmq

from daemon.messages import Channel, Message, MessageError, topic_of

DEFAULT_RUNTIME_DIR = Path("/run/tolk")
#: The box's processes, in start order: the one list (``tolk run``, the units, control's view).
PROCESSES: tuple[str, ...] = ("capture", "camera", "session", "playback", "control")
#: Run only when the config needs them: the local engine when [service] backend resolves to local,
#: the fleet's link (mqtt) when [mqtt] broker is set.
OPTIONAL_PROCESSES: tuple[str, ...] = ("engine", "mqtt")
#: Processes that run only when the config gives them work (a camera, the engine, a broker). A
#: subscriber looks for a missing publisher again after ZeroMQ's reconnect interval: 0.1 s for the
#: box's core (a restarted capture is heard again at once), RARE_RECONNECT_MS for these, which are
#: mostly absent (ten wake-ups a second each, for nothing, in every process that follows them).
SOMETIMES: frozenset[str] = frozenset({"camera", *OPTIONAL_PROCESSES})
#: Started on their first connection (systemd's socket activation, or ``tolk run`` doing the same),
#: and gone again when idle: the engine, while the session uses it.
ON_DEMAND: frozenset[str] = frozenset({"engine"})
RARE_RECONNECT_MS = 2000
#: The processes whose state control follows.
SERVICES = PROCESSES
# Bulk: about 4 s of 20 ms chunks; state: plenty for bursts of captions.
HWM = {Channel.BULK: 200, Channel.STATE: 1000}
_IPC_PATH_MAX = 107
ZERO_COPY_FROM = 65536


class BusError(RuntimeError):
    pass


def runtime_dir() -> Path:
    """TOLK_RUNTIME_DIR, else systemd's RUNTIME_DIRECTORY, else /run/tolk."""
    env = os.environ.get("TOLK_RUNTIME_DIR") or os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(env) if env else DEFAULT_RUNTIME_DIR


def endpoint(service: str, channel: Channel, directory: Path | None = None) -> str:
    path = (directory or runtime_dir()) / f"{service}.{channel.value}"
    if len(str(path)) > _IPC_PATH_MAX:
        raise BusError(f"ipc path too long ({len(str(path))} > {_IPC_PATH_MAX} characters): {path}")
    return f"ipc://{path}"


class Publisher:
    """One PUB socket. Sending never blocks: at the high-water mark ZeroMQ drops for slow peers.

    A Publisher belongs to one thread (ZeroMQ sockets are not thread-safe): the capture thread
    owns its bulk publisher, the event loop its state publisher.
    """

    def __init__(self, ctx: zmq.Context, service: str, channel: Channel, directory: Path | None = None) -> None:
        self.address = endpoint(service, channel, directory)
        self.channel = channel
        self._seq: dict[str, int] = {}
        self._sock = ctx.socket(zmq.PUB)
        self._sock.setsockopt(zmq.SNDHWM, HWM[channel])
        self._sock.setsockopt(zmq.LINGER, 0)
        path = self.address.removeprefix("ipc://")
        # A previous instance that died leaves its socket file; binding over it is what we want.
        if os.path.exists(path):
            os.unlink(path)
        try:
            self._sock.bind(self.address)
        except zmq.ZMQError as exc:
            self._sock.close(0)
            raise BusError(f"cannot bind {self.address}: {exc}") from None
        self.sent = 0

    def publish(self, msg: Message) -> None:
        if msg.channel is not self.channel:
            raise BusError(f"{msg.topic} belongs on the {msg.channel.value} socket, not {self.channel.value}")
        if msg.seq == 0:
            msg.seq = self._seq.get(msg.topic, 0) + 1
        self._seq[msg.topic] = msg.seq
        frames = msg.to_frames()
        # PUB never blocks on send; NOBLOCK makes that explicit. Zero-copy costs more than it saves
        # below ZeroMQ's own copy threshold (64 KiB): only a camera frame is worth it.
        self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=len(frames[-1]) < ZERO_COPY_FROM)
        self.sent += 1

    def close(self) -> None:
        self._sock.close(0)


class Subscriber:
    """A SUB socket connected to some services' sockets of one channel, read from an asyncio loop.

    Undecodable frames are counted in ``rejected`` and skipped: one bad peer never stops a reader.
    The socket is a plain one, waited on through ZeroMQ's notification descriptor (``_readable``):
    pyzmq's asyncio sockets spend ~0.2 ms of Python on every message, more than the message.
    """

    def __init__(
        self,
        ctx: zmq.Context,
        channel: Channel,
        services: Iterable[str],
        topics: Iterable[type[Message]],
        directory: Path | None = None,
    ) -> None:
        self._sock: zmq.Socket[bytes] = zmq.Context.shadow(ctx.underlying).socket(zmq.SUB)
        self._sock.setsockopt(zmq.RCVHWM, HWM[channel])
        self._sock.setsockopt(zmq.LINGER, 0)
        for cls in topics:
            if cls.channel is not channel:
                raise BusError(f"{cls.topic} is not on the {channel.value} channel")
            self._sock.setsockopt(zmq.SUBSCRIBE, topic_of(cls))
        # Connected in this order: ZeroMQ takes the reconnect interval at each connect.
        for service in sorted(services, key=lambda s: s in SOMETIMES):
            if service in SOMETIMES:
                self._sock.setsockopt(zmq.RECONNECT_IVL, RARE_RECONNECT_MS)
            self._sock.connect(endpoint(service, channel, directory))
        self.received = 0
        self.rejected = 0
        self.last_error = ""
        self._fd = int(self._sock.getsockopt(zmq.FD))
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop the descriptor is watched from
        self._waiter: asyncio.Future[None] | None = None

    async def recv(self) -> Message:
        while True:
            # EVENTS before reading: a read that finds nothing raises, and costs more than asking.
            if not int(self._sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                await self._readable()
                continue
            try:
                frames = self._sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                continue
            try:
                msg = Message.from_frames(frames)
            except MessageError as exc:
                self.rejected += 1
                self.last_error = str(exc)
                continue
            self.received += 1
            return msg

    async def _readable(self) -> None:
        """Until ZeroMQ's descriptor signals. It only says "look at EVENTS" (edge-triggered), so
        recv() reads EVENTS after every wake; the descriptor stays registered for the socket's life
        (registering it per message cost more than the message)."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._unwatch()
            self._loop, self._waiter = loop, None
            loop.add_reader(self._fd, self._signalled)
        waiter = self._waiter
        if waiter is None or waiter.done():
            waiter = self._waiter = loop.create_future()
        await waiter

    def _signalled(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        else:
            # No one waits (the reader is busy elsewhere): reading EVENTS quiets the descriptor,
            # which would otherwise stay readable and wake the loop on every turn.
            self._sock.getsockopt(zmq.EVENTS)

    def __aiter__(self) -> Subscriber:
        return self

    async def __anext__(self) -> Message:
        return await self.recv()

    def _unwatch(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._fd)
        self._loop = None

    def close(self) -> None:
        self._unwatch()
        self._sock.close(0)


class Bus:
    """A service's view of the bus: its two publishers and the subscribers it opens."""

    def __init__(self, service: str, directory: Path | None = None) -> None:
        self.service = service
        self.directory = directory or runtime_dir()
        if not self.directory.is_dir():
            raise BusError(f"runtime directory {self.directory} does not exist (set TOLK_RUNTIME_DIR)")
        # Plain sockets all: sending never awaits (and the capture thread owns one), and the
        # subscribers wait on the event loop themselves (Subscriber._readable).
        self.ctx = zmq.Context()
        self._subs: list[Subscriber] = []
        self.state = Publisher(self.ctx, service, Channel.STATE, self.directory)
        self.bulk = Publisher(self.ctx, service, Channel.BULK, self.directory)

    def publish(self, msg: Message) -> None:
        """Publish from the event loop's thread (bulk from another thread: use ``self.bulk`` there only)."""
        (self.bulk if msg.channel is Channel.BULK else self.state).publish(msg)

    def subscribe(self, services: Iterable[str], *topics: type[Message]) -> Subscriber:
        channels = {cls.channel for cls in topics}
        if len(channels) != 1:
            raise BusError("subscribe to topics of one channel at a time")
        sub = Subscriber(self.ctx, channels.pop(), services, topics, self.directory)
        self._subs.append(sub)
        return sub

    def close(self) -> None:
        for sub in self._subs:
            sub.close()
        self.state.close()
        self.bulk.close()
        self.ctx.term()

