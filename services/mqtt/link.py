"""The connection to the fleet's broker: connect, last will, reconnect with the box's own jitter.

paho-mqtt's network loop runs in a thread of its own (paho is built for that: publishing from the
event loop is thread-safe); everything it hears is handed to the event loop. One connection at a
time: connect (TLS with ``[mqtt] ca_file``, user and password), then paho's loop until the
connection ends, then a wait from ``daemon.backoff`` (1 s doubling to 60 s, ``FLEET_SPREAD``,
drawn from the box's own seed) so that a fleet whose broker restarts comes back spread out.
The last will (``availability`` = ``offline``, retained) tells the fleet when the box dies;
a clean stop says it itself. Nothing is queued while disconnected: on every connect the service
publishes what is current.

Every payload passes the secret guard: the API key and the broker password never leave in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from daemon.backoff import FLEET_SPREAD, Backoff, box_rng
from daemon.config_sections import MQTT_SCHEMES, MqttConfig

#: The systemd credential that holds the broker password (LoadCredential= in tolk-mqtt.service).
PASSWORD_CREDENTIAL = "mqtt-password"
KEEPALIVE_S = 20
CONNECT_TIMEOUT_S = 10.0
#: A connection that lasted this long resets the backoff.
STABLE_S = 10.0
#: Messages from the broker waiting for the event loop; beyond this they are dropped (and counted).
INCOMING_MAX = 256
#: A clean stop waits this long for the broker to take the last "offline".
LAST_WORD_S = 2.0
MASK = "********"


@dataclass(frozen=True)
class Incoming:
    topic: str
    payload: bytes
    retain: bool
    #: MQTT 5 correlation data of a request, echoed in its answer.
    correlation: bytes | None = None


class SecretGuard:
    """Masks the box's secrets in anything about to be published (they have no business there)."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()
        self.withheld = 0

    def add(self, *secrets: str | None) -> None:
        self.secrets |= {s for s in secrets if s and len(s) >= 4}

    def clean(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                self.withheld += 1
                text = text.replace(secret, MASK)
        return text


class BrokerLink:
    def __init__(
        self,
        cfg: MqttConfig,
        box_id: str,
        will_topic: str,
        password: str | None,
        guard: SecretGuard,
        log: logging.Logger,
    ) -> None:
        assert cfg.broker is not None
        parts = urlsplit(cfg.broker)
        self.url = cfg.broker
        self.host = parts.hostname or ""
        self.port = parts.port or MQTT_SCHEMES[parts.scheme]
        self.availability = will_topic
        self.guard = guard
        self.log = log
        self.backoff = Backoff(first_s=1.0, max_s=60.0, spread=FLEET_SPREAD, rng=box_rng(box_id))
        self.subscriptions: list[str] = []
        #: Called on the event loop each time the broker accepted a connection.
        self.on_up: Callable[[], None] = lambda: None
        self.incoming: asyncio.Queue[Incoming] = asyncio.Queue(INCOMING_MAX)
        self.up = asyncio.Event()
        self.why_down = "not connected yet"
        self.retry_in_s = 0.0
        self.counters = {"connects": 0.0, "connection_losses": 0.0, "published": 0.0, "incoming_dropped": 0.0}
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._serving: asyncio.Future[str] | None = None
        self._refused = ""
        self.client = self._client(cfg, box_id, password)

    def _client(self, cfg: MqttConfig, box_id: str, password: str | None) -> paho.Client:
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"tolk-{box_id}", protocol=MQTTProtocolVersion.MQTTv5
        )
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.will_set(self.availability, b"offline", qos=1, retain=True)
        if cfg.secure:
            # The system's CAs unless the fleet runs its own; the broker's name is always checked.
            cafile = str(cfg.ca_file) if cfg.ca_file is not None else None
            client.tls_set_context(ssl.create_default_context(cafile=cafile))
        if cfg.username is not None:
            client.username_pw_set(cfg.username, password)
        elif password:
            raise ValueError("a broker password is set but no [mqtt] username: MQTT sends a password only with a user")
        # The network thread writes (it is woken when something is queued): without a write hook,
        # paho writes from the publishing thread when it runs no loop thread of its own, and two
        # threads writing one TLS socket break the stream.
        client.on_socket_register_write = client.on_socket_unregister_write = _network_thread_writes
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        return client

    # --- the event loop's side -------------------------------------------------------------------

    async def run(self) -> None:
        """Connect, serve, wait, again, until ``close()``."""
        self._loop = loop = asyncio.get_running_loop()
        while not self._closing:
            self._refused = ""
            began = loop.time()
            # Shielded: cancelling run() must not cancel the thread's answer, which close() awaits.
            why = await asyncio.shield(self._serve_in_thread())
            was_up = self.up.is_set()
            self.up.clear()
            if self._closing:
                return
            if was_up:
                self.counters["connection_losses"] += 1
                if loop.time() - began >= STABLE_S:
                    self.backoff.reset()
            self.why_down = why
            self.retry_in_s = self.backoff.next_delay()
            self.log.warning("broker %s: %s; again in %.1f s", self.url, why, self.retry_in_s)
            await asyncio.sleep(self.retry_in_s)

    def publish(
        self, topic: str, payload: str, *, retain: bool = False, qos: int = 1, correlation: bytes | None = None
    ) -> None:
        """Publish now if connected (else nothing: the service republishes what is current on connect)."""
        if not self.up.is_set():
            return
        properties = None
        if correlation is not None:
            properties = Properties(PacketTypes.PUBLISH)
            properties.CorrelationData = correlation
        self.client.publish(topic, self.guard.clean(payload).encode(), qos=qos, retain=retain, properties=properties)
        self.counters["published"] += 1

    def subscribe(self, topics: Iterable[str]) -> None:
        """What to listen to; taken again on every connection (a clean start forgets it)."""
        self.subscriptions = list(topics)
        if self.up.is_set() and self.subscriptions:
            self.client.subscribe(self._subscription_list())

    async def close(self) -> None:
        """Say ``offline`` (the last will is only for deaths), then disconnect and let the thread end."""
        if self.up.is_set():
            info = self.client.publish(self.availability, b"offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                await asyncio.to_thread(info.wait_for_publish, LAST_WORD_S)
        self._closing = True  # the network thread disconnects at its next turn
        if self._serving is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._serving), LAST_WORD_S)
        self.up.clear()

    # --- the network thread's side ---------------------------------------------------------------

    def _serve_in_thread(self) -> asyncio.Future[str]:
        loop = asyncio.get_running_loop()
        done: asyncio.Future[str] = loop.create_future()

        def serve() -> None:
            why = self._serve()
            with contextlib.suppress(RuntimeError):  # the loop is gone: the process is ending
                loop.call_soon_threadsafe(_settle, done, why)

        # A daemon thread: a connect stuck in a dead network must not hold the process at exit.
        threading.Thread(target=serve, name="mqtt-network", daemon=True).start()
        self._serving = done
        return done

    def _serve(self) -> str:
        """One connection: connect, then paho's loop until it ends; why it ended."""
        try:
            self.client.connect(self.host, self.port, keepalive=KEEPALIVE_S, clean_start=True)
        except (OSError, ssl.SSLError, ValueError) as exc:
            return f"cannot connect: {_describe(exc)}"
        rc = MQTTErrorCode.MQTT_ERR_SUCCESS
        disconnecting = False
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            if self._closing and not disconnecting:
                disconnecting = True
                self.client.disconnect()
            rc = self.client.loop(timeout=0.5 if self._closing else 1.0)
        return self._refused or f"connection lost ({paho.error_string(rc)})"

    def _on_connect(self, client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            # Not worth retrying fast, but a fixed password or ACL should not need a person at the box.
            self._refused = f"the broker refused the connection: {reason}"
            return
        if self.subscriptions:
            client.subscribe(self._subscription_list())
        self._to_loop(self._went_up)

    def _on_disconnect(self, _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure and not self._refused:
            self._refused = f"disconnected by the broker: {reason}"

    def _on_message(self, _client: paho.Client, _userdata: Any, message: paho.MQTTMessage) -> None:
        props = getattr(message, "properties", None)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        incoming = Incoming(message.topic, bytes(message.payload), bool(message.retain), correlation)
        self._to_loop(self._deliver, incoming)

    def _subscription_list(self) -> list[tuple[str, SubscribeOptions]]:
        # Retain as published: a request published retained is seen as such even while connected.
        return [(topic, SubscribeOptions(qos=1, retainAsPublished=True)) for topic in self.subscriptions]

    def _to_loop(self, fn: Callable[..., None], *args: Any) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(fn, *args)

    # --- back on the event loop ------------------------------------------------------------------

    def _went_up(self) -> None:
        self.up.set()
        self.why_down = ""
        self.counters["connects"] += 1
        self.log.info("connected to %s", self.url)
        self.on_up()

    def _deliver(self, incoming: Incoming) -> None:
        try:
            self.incoming.put_nowait(incoming)
        except asyncio.QueueFull:
            self.counters["incoming_dropped"] += 1


def _network_thread_writes(_client: paho.Client, _userdata: Any, _sock: Any) -> None:
    """Nothing to do: the network thread's loop writes whatever is queued."""


def _settle(done: asyncio.Future[str], why: str) -> None:
    if not done.done():
        done.set_result(why)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the broker's certificate is not trusted ({exc.verify_message}); check [mqtt] ca_file"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
