"""Shared test helpers: short runtime dirs, real alsa-lib PCMs, a real NOTIFY_SOCKET, service processes."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared"


def short_tmpdir(prefix: str = "tk") -> Path:
    """A temp dir with a short path: ipc:// paths must stay under 107 characters."""
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


class NotifySocket:
    """A real sd_notify datagram socket, as systemd binds for a Type=notify unit."""

    def __init__(self, directory: Path) -> None:
        self.path = str(directory / "notify.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []

    def wait_for(self, needle: str, timeout: float = 15.0) -> list[str]:
        """Read datagrams until one contains ``needle``; returns all read so far."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(needle in m for m in self.messages):
                return self.messages
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                break
            self.messages.append(data.decode())
        if any(needle in m for m in self.messages):
            return self.messages
        raise AssertionError(f"no {needle!r} within {timeout}s; got {self.messages}")

    def drain(self, seconds: float) -> list[str]:
        """Collect every datagram that arrives within ``seconds``."""
        got: list[str] = []
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.sock.settimeout(left)
            try:
                got.append(self.sock.recv(4096).decode())
            except TimeoutError:
                break
        self.messages.extend(got)
        return got

    def close(self) -> None:
        self.sock.close()


def alsa_home(directory: Path, asoundrc: str) -> Path:
    """A HOME whose ~/.asoundrc defines the test PCMs (alsa-lib reads it on first use per process)."""
    home = directory / "home"
    home.mkdir(exist_ok=True)
    (home / ".asoundrc").write_text(asoundrc, encoding="utf-8")
    return home


def service_env(runtime: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env.pop("WATCHDOG_USEC", None)
    env.pop("DASHSCOPE_API_KEY", None)
    env["TOLK_RUNTIME_DIR"] = str(runtime)
    env["TOLK_STATE_DIR"] = str(runtime / "state")
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def tolk_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "daemon.app.cli", *args]


@contextmanager
def running(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> Iterator[subprocess.Popen[bytes]]:
    """A process that is terminated (then killed) when the block ends, its output kept in ``log``."""
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05, what: str = "") -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or pred}; last={last!r}")


def espeak_wav(text: str, out: Path, voice: str = "en", rate16k: bool = True) -> Path:
    """Speech from espeak-ng, converted by sox to 16 kHz mono S16 when asked."""
    raw = out.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", voice, "-w", str(raw), text], check=True, capture_output=True)
    if not rate16k:
        return raw
    subprocess.run(["sox", str(raw), "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True)
    return out


def wav_pcm(path: Path) -> bytes:
    import wave

    with wave.open(str(path), "rb") as w:
        return w.readframes(w.getnframes())


def rmtree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


class PulseMic:
    """A private PulseAudio: its source ``mic`` hands on what is written into a FIFO (16 kHz mono
    s16le) as soon as it is there, paced only by the writer (no clock of its own; see TESTING.md);
    ``add_room`` gives a microphone with a clock."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        rt = directory / "rt"
        rt.mkdir(parents=True, exist_ok=True)
        rt.chmod(0o700)
        (directory / "phome").mkdir(exist_ok=True)
        self.fifo = rt / "mic.fifo"
        self.server = f"unix:{rt}/native"
        env = dict(os.environ, HOME=str(directory / "phome"), XDG_RUNTIME_DIR=str(rt))
        self.proc = subprocess.Popen(
            [
                "pulseaudio", "-n", "--daemonize=no", "--exit-idle-time=-1", "--disallow-exit",
                "--use-pid-file=no", f"--log-target=file:{directory}/pulse.log",
                "-L", f"module-native-protocol-unix socket={rt}/native auth-anonymous=1",
                "-L", "module-null-sink sink_name=spk rate=24000 channels=1",
                "-L", f"module-pipe-source source_name=mic file={self.fifo} format=s16le rate=16000 channels=1",
            ],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(lambda: self.fifo.exists() and (rt / "native").exists(), 10, what="pulseaudio to start")
        # O_RDWR: never blocks, never EOF for the reader between writes.
        self.fd = os.open(self.fifo, os.O_RDWR)

    def asoundrc(self, name: str = "mic", device: str = "mic") -> str:
        return f'pcm.{name} {{\n    type pulse\n    server "{self.server}"\n    device "{device}"\n}}\n'

    def load_module(self, *args: str) -> None:
        """Load a PulseAudio module into this server (e.g. a loopback for a room's echo)."""
        subprocess.run(["pactl", f"--server={self.server}", "load-module", *args], check=True, capture_output=True)

    def add_room(self) -> str:
        """A room the box can listen to with a real clock: a null sink whose monitor paces what is
        played into it (``speak``) as a sound card would. Returns the device to record."""
        self.load_module("module-null-sink", "sink_name=room", "format=s16le", "rate=16000", "channels=1")
        return "room.monitor"

    def speak(self, pcm: bytes) -> None:
        """Play 16 kHz mono s16le into the room in real time; returns when it has been played."""
        subprocess.run(
            ["pacat", f"--server={self.server}", "--playback", "--raw", "--format=s16le", "--rate=16000",
             "--channels=1", "--device=room", "--latency-msec=200"],
            input=pcm, check=True, capture_output=True, timeout=len(pcm) / 32000 + 30,
        )  # fmt: skip

    def write(self, pcm: bytes) -> None:
        view = memoryview(pcm)
        while view:
            view = view[os.write(self.fd, view) :]

    def close(self) -> None:
        os.close(self.fd)
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class AnsweringBus:
    """The bus of an in-process control API: keeps what it publishes and answers each command as
    the process that carries it out does (a ``CommandAck`` into the status aggregator, the way
    those answers reach control). ``silent``: commands nobody answers (the process is down)."""

    def __init__(self, status: Any, silent: tuple[str, ...] = ()) -> None:
        from daemon.messages import Message

        self.status = status
        self.silent = silent
        self.published: list[Message] = []

    def __call__(self, msg: Any) -> None:
        from daemon.messages import Command, CommandAck

        self.published.append(msg)
        if isinstance(msg, Command) and msg.id and msg.name not in self.silent:
            self.status.handle(CommandAck(id=msg.id, name=msg.name, detail=f"{msg.name} carried out"))
