"""The ALSA seam shared by capture and playback: how a PCM is opened, and how we keep trying.

Both audio processes open one PCM through ``open_pcm`` (a factory that tests or another
backend could swap), hand it to the one thread that uses it, and reopen it with backoff when
it fails: a USB microphone or speaker that is unplugged and plugged back in must come back
without a restart, and a device that is missing at boot must not keep the box from coming up.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import alsaaudio

from daemon.backoff import Backoff

BYTES_PER_FRAME = 2  # S16_LE, mono


class Pcm(Protocol):
    """The part of ``alsaaudio.PCM`` tolk uses."""

    def read(self) -> tuple[int, bytes]: ...
    def write(self, data: bytes | memoryview) -> int: ...
    def drain(self) -> int: ...
    def drop(self) -> int: ...
    def info(self) -> dict[str, Any]: ...
    def avail(self) -> int: ...
    def state(self) -> int: ...
    def polldescriptors(self) -> list[tuple[int, int]]: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class PcmSpec:
    device: str
    capture: bool
    rate: int
    period_ms: int
    periods: int = 4
    channels: int = 1

    @property
    def period_frames(self) -> int:
        return self.rate * self.period_ms // 1000

    @property
    def period_bytes(self) -> int:
        return self.period_frames * self.channels * BYTES_PER_FRAME

    def describe(self) -> str:
        direction = "capture" if self.capture else "playback"
        return f"{direction} device {self.device!r}"


class DeviceError(Exception):
    """A PCM that cannot be opened or used; ``reason`` is ALSA's own words."""

    def __init__(self, device: str, reason: str) -> None:
        self.device = device
        self.reason = reason
        super().__init__(f"device {device!r}: {reason}")


PcmFactory = Callable[[PcmSpec], Pcm]


def alsa_reason(exc: BaseException) -> str:
    """ALSA's message without pyalsaaudio's ``[device]`` suffix: "No such file or directory"."""
    text = str(exc.args[0]) if exc.args else str(exc)
    return re.sub(r"\s*\[[^\]]*\]$", "", text) or type(exc).__name__


def open_alsa_pcm(spec: PcmSpec) -> Pcm:
    """Open an S16_LE PCM with small periods; raises DeviceError with ALSA's reason.

    Capture is non-blocking: the reader waits in poll() with a timeout, so a device that stops
    delivering is noticed (and reopened) instead of hanging a read for good. Playback blocks:
    the device's own pace is what paces the writer.
    """
    try:
        pcm: Pcm = alsaaudio.PCM(
            type=alsaaudio.PCM_CAPTURE if spec.capture else alsaaudio.PCM_PLAYBACK,
            mode=alsaaudio.PCM_NONBLOCK if spec.capture else alsaaudio.PCM_NORMAL,
            device=spec.device,
            channels=spec.channels,
            rate=spec.rate,
            format=alsaaudio.PCM_FORMAT_S16_LE,
            periodsize=spec.period_frames,
            periods=spec.periods,
        )
    except alsaaudio.ALSAAudioError as exc:
        raise DeviceError(spec.device, alsa_reason(exc)) from None
    return pcm


# alsa-lib prints its own diagnostics to stderr on every failed open ("Unknown PCM foo"). The
# first failure's lines stay in the journal (they say more than the error code); while the
# same failure repeats on every retry they are discarded, or a missing USB microphone would
# add a line every few seconds for as long as it stays unplugged.
_ErrorHandler = ctypes.CFUNCTYPE(None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p)


@_ErrorHandler
def _discard_alsa_error(file: bytes, line: int, function: bytes, err: int, fmt: bytes) -> None:
    return None


def _libasound() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL(ctypes.util.find_library("asound") or "libasound.so.2")
    except OSError:
        return None


_LIBASOUND = _libasound()


def quiet_alsa_diagnostics(quiet: bool) -> None:
    """Discard alsa-lib's stderr diagnostics (True) or restore its default printer (False)."""
    if _LIBASOUND is not None:
        _LIBASOUND.snd_lib_error_set_handler(_discard_alsa_error if quiet else None)


class DeviceKeeper:
    """Opens a PCM, retrying with backoff until it opens; remembers why it is not open.

    Opening happens on the event loop's thread on purpose: alsa-lib opens are quick on real
    devices, and an open that blocks (a FIFO-backed test PCM with no writer) holds the GIL
    anyway, so a worker thread would gain nothing and could outlive the process's shutdown.
    """

    def __init__(self, factory: PcmFactory, log: logging.Logger) -> None:
        self.factory = factory
        self.log = log
        self.backoff = Backoff()
        self.waiting_reason: str | None = None
        self._announced: str | None = None  # the failure last logged at error level
        self._lost: str | None = None  # how the device last failed in use, until it works again
        self._quiet_reopen = False
        self.failures = 0
        self.opens = 0
        #: True while open() waits for the device: the work the process can do, being done.
        self.retrying = False
        self._wake = asyncio.Event()

    def try_open(self, spec: PcmSpec) -> Pcm | None:
        try:
            pcm = self.factory(spec)
        except DeviceError as exc:
            self._failed(spec, exc.reason)
            return None
        if self.waiting_reason is not None:
            (self.log.debug if self._quiet_reopen else self.log.info)("%s is open", spec.describe())
            quiet_alsa_diagnostics(False)
        self._quiet_reopen = False
        self.waiting_reason = self._announced = None
        self.backoff.reset()
        self.opens += 1
        return pcm

    def lost(self, spec: PcmSpec, reason: str) -> None:
        """The open device failed while in use: say so once; the next open retries it.

        The same failure again before the device worked (a microphone that opens but stays
        silent, reopened every few seconds) is logged at debug level only.
        """
        self._quiet_reopen = reason == self._lost
        if self._quiet_reopen:
            self.log.debug("%s failed again: %s; reopening", spec.describe(), reason)
        else:
            self.log.error("%s failed: %s; reopening", spec.describe(), reason)
        self._lost = reason
        self.waiting_reason = reason
        self._announced = None
        quiet_alsa_diagnostics(False)  # the next open's own diagnostics are news again

    def working(self) -> None:
        """The open device delivered: a later failure is news again."""
        self._lost = None

    async def open(self, spec_of: Callable[[], PcmSpec]) -> Pcm:
        """Keep trying (the spec is re-read each time: a config change applies at once)."""
        self.retrying = True
        try:
            while True:
                pcm = self.try_open(spec_of())
                if pcm is not None:
                    return pcm
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.backoff.next_delay())
        finally:
            self.retrying = False

    def retry_now(self) -> None:
        """Skip the current backoff wait (the device name changed)."""
        self.backoff.reset()
        self._wake.set()

    def _failed(self, spec: PcmSpec, reason: str) -> None:
        self.failures += 1
        self.waiting_reason = reason
        if reason == self._announced:
            self.log.debug("still cannot open %s: %s", spec.describe(), reason)
            return
        # Logged once per distinct reason: a missing microphone must not flood the journal.
        self.log.error("cannot open %s: %s; retrying in the background", spec.describe(), reason)
        self._announced = reason
        quiet_alsa_diagnostics(True)
