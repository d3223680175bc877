from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import NotifySocket, PulseMic, rmtree, short_tmpdir


@pytest.fixture
def rundir() -> Iterator[Path]:
    """A short runtime dir (ipc paths stay under 107 characters), with a state dir inside."""
    path = short_tmpdir()
    (path / "state").mkdir()
    yield path
    rmtree(path)


@pytest.fixture
def notify(rundir: Path) -> Iterator[NotifySocket]:
    sock = NotifySocket(rundir)
    yield sock
    sock.close()


@pytest.fixture
def sd(notify: NotifySocket) -> Iterator[NotifySocket]:
    """The notify socket, read all the time as systemd does: a datagram socket nobody reads
    holds 10 messages and refuses the rest (the service keeps them for later, see daemon/notify.py)."""
    stop = threading.Event()

    def pump() -> None:
        while not stop.is_set():
            notify.drain(0.05)

    thread = threading.Thread(target=pump, name="notify-pump", daemon=True)
    thread.start()
    yield notify
    stop.set()
    thread.join(2)


@pytest.fixture
def mic(rundir: Path) -> Iterator[PulseMic]:
    """A microphone on alsa-lib's pulse plugin: a private PulseAudio fed through a FIFO."""
    pulse = PulseMic(rundir / "pulse")
    yield pulse
    pulse.close()
