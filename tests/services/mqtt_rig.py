"""A real Mosquitto (Debian's ``mosquitto``) on loopback, with TLS and a password file, started and
stopped by the test; and a staff member's client that watches every topic (``Watcher``).

The CA and the broker's certificate (for 127.0.0.1 and localhost) are made with the ``openssl``
command; the password file with ``mosquitto_passwd``. The broker keeps no state on disk, as
Mosquitto by default: a restart forgets every retained message, so what comes back after one was
published again.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from tests.helpers import free_port, wait_until

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
needs_mosquitto = pytest.mark.skipif(
    not Path(MOSQUITTO).exists(), reason="mosquitto is not installed (.ci/setup test installs it)"
)

BOX_USER, BOX_PASSWORD = "box", "box-pw-5d1e9a"
STAFF_USER, STAFF_PASSWORD = "staff", "staff-pw-77c0b3"


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A CA, and a certificate it signed for the broker on 127.0.0.1: (ca, cert, key)."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.crt", "broker.key", "broker.csr", "broker.crt"))
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    ca_ext = ["-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"]
    _openssl("req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2", "-subj", "/CN=tolk test CA", *ca_ext)
    _openssl("req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost")
    ext = directory / "broker.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-out", cert,
             "-days", "2", "-extfile", ext)  # fmt: skip
    return ca, cert, key


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


class Broker:
    """Mosquitto on 127.0.0.1:``port`` (TLS only), users ``box`` and ``staff``, anonymous refused."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.ca, cert, key = make_certificates(directory)
        passwd = directory / "passwd"
        passwd.touch(0o600)
        for user, password in ((BOX_USER, BOX_PASSWORD), (STAFF_USER, STAFF_PASSWORD)):
            subprocess.run(["mosquitto_passwd", "-b", str(passwd), user, password], check=True, capture_output=True)
        self.port = free_port()
        self.log = directory / "mosquitto.log"
        self.conf = directory / "mosquitto.conf"
        self.conf.write_text(
            f"""per_listener_settings false
allow_anonymous false
password_file {passwd}
persistence false
user {pwd.getpwuid(os.getuid()).pw_name}
log_dest file {self.log}
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
listener {self.port} 127.0.0.1
cafile {self.ca}
certfile {cert}
keyfile {key}
"""
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtts://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)  # fmt: skip
        wait_until(self._accepting, 10, what="mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def _accepting(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.log.read_text(errors="replace")[-2000:]
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def box_config(self, box_id: str, extra: str = "") -> str:
        """The [mqtt] table of a box on this broker (its password in a file beside the broker's)."""
        secret = self.dir / "box-password"
        secret.write_text(BOX_PASSWORD + "\n")
        return (
            f'[mqtt]\nbroker = "{self.url}"\nusername = "{BOX_USER}"\npassword_file = "{secret}"\n'
            f'ca_file = "{self.ca}"\nbox_id = "{box_id}"\n{extra}\n'
        )


@dataclass
class Seen:
    at: float  # time.monotonic() when it arrived
    topic: str
    payload: bytes
    retain: bool

    def json(self) -> Any:
        return json.loads(self.payload)


class Watcher:
    """Staff's view of the broker: subscribes to everything (``#``), keeps what arrives, publishes."""

    def __init__(self, broker: Broker, name: str = "watcher") -> None:
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(STAFF_USER, STAFF_PASSWORD)
        self.client.tls_set_context(ssl.create_default_context(cafile=str(broker.ca)))
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *_args: subscribed.set()
        # Retain as published: a live subscriber is told whether a message was retained, too.
        everything = ("#", SubscribeOptions(qos=1, retainAsPublished=True))
        self.client.on_connect = lambda client, *_args: client.subscribe([everything])
        self.client.connect("127.0.0.1", broker.port, keepalive=20)
        self.client.loop_start()
        assert subscribed.wait(10), "the watcher could not subscribe"

    def _on_message(self, _client: Any, _userdata: Any, message: paho.MQTTMessage) -> None:
        with self._arrived:
            self.seen.append(Seen(time.monotonic(), message.topic, bytes(message.payload), bool(message.retain)))
            self._arrived.notify_all()

    def wait_for(self, pred: Callable[[Seen], bool], timeout: float = 20.0, since: int = 0, what: str = "") -> Seen:
        """The first message from index ``since`` on that matches; waits for it to arrive."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for seen in self.seen[since:]:
                    if pred(seen):
                        return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    recent = [(s.topic, s.payload[:120]) for s in self.seen[-8:]]
                    raise AssertionError(f"no {what or 'matching message'} within {timeout}s; last: {recent}")
                self._arrived.wait(left)

    def on(self, topic: str, timeout: float = 20.0, since: int = 0, where: Callable[[Any], bool] | None = None) -> Any:
        """The JSON of the first message on ``topic`` (from ``since``) that satisfies ``where``."""

        def matches(seen: Seen) -> bool:
            if seen.topic != topic or not seen.payload:
                return False
            return where is None or bool(where(seen.json()))

        return self.wait_for(matches, timeout, since, what=f"message on {topic}").json()

    def mark(self) -> int:
        """An index: what arrives from now on is at or after it."""
        with self._lock:
            return len(self.seen)

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(10)

    def everything(self) -> list[Seen]:
        with self._lock:
            return list(self.seen)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(rundir: Path) -> Any:
    """A running broker for the test (stopped at its end)."""
    b = Broker(rundir / "broker")
    b.start()
    yield b
    b.stop()
