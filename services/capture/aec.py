"""Echo cancellation (``[audio] echo = "aec"``): the box's own voice out of the microphone.

WebRTC's AEC3 (through ``livekit``) on 10 ms frames: the speaker's signal of those 10 ms
(``RenderReference``) as the far end, then the microphone's frame, echo removed. Also here: the
onset guard (silence at the start of an answer until the canceller has locked on) and the
residue rule (what the canceller took most of is silence to the VAD). Why each exists, the
figures it reports (``EchoState``) and the measurements behind the constants: docs/echo.md.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import Protocol

import numpy as np

from daemon.messages import EchoState
from services.capture.reference import RATE, RenderReference, position

FRAME = RATE // 100  # WebRTC's APM works on 10 ms
#: The reference cursor counts the microphone's samples; it is laid anew on the stamps when they
#: differ from the count by more than ``RESYNC_MS`` for ``RESYNC_AFTER_MS`` on end (samples were
#: lost: an overrun, a dropped backlog), or at once by more than ``RESYNC_AT_ONCE_MS``. A read
#: the scheduler woke late stamps its period late, and the backlog behind it comes back to time
#: within a few periods: re-laying on such a stamp would shift the reference under the canceller.
RESYNC_MS = 20
RESYNC_AFTER_MS = 200
RESYNC_AT_ONCE_MS = 500
#: The speaker counts as talking when its reference is above this RMS (about -50 dBFS).
FAR_ACTIVE_RMS = 100.0
#: ERLE averages the last this-many seconds of "only the box speaks".
ERLE_WINDOW_S = 5.0
#: ERLE is reported once this much such audio was heard.
ERLE_MIN_S = 0.5
#: A period goes into ERLE once the VAD has had this long to take it for the start of speech.
ERLE_CONFIRM_S = 0.3

#: The box's voice after a quiet spell goes out as silence for at least this long, then until the
#: canceller shows it has locked on, but no longer than ONSET_GUARD_MAX_MS (docs/echo.md).
ONSET_GUARD_MS = 400
ONSET_GUARD_MAX_MS = 1000
#: Quiet from the speaker this long makes its next sound an onset.
ONSET_AFTER_QUIET_MS = 500
#: The box's voice counts as audible in the microphone this long after it stopped (the room's
#: delay and reverberation): speech must hold longer to start (``daemon/vad.py``) until then.
ECHO_TAIL_MS = 300
#: While the box speaks, a period the canceller took more than this out of is only its residue.
RESIDUAL_DB = 20.0
#: Until the canceller has first locked on (this many periods in a row of only residue, or of
#: output quieter than QUIET_OUT_RMS, while the box speaks), the box's speech is half duplex.
LOCK_PERIODS = 5
QUIET_OUT_RMS = 50.0

class Canceller(Protocol):
    def process(self, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
        """One 10 ms frame (int16) of the microphone and of the far end; the microphone cleaned."""
        ...


class WebRtcCanceller:
    """WebRTC AEC3 through livekit's AudioProcessingModule; nothing else of WebRTC is switched on."""

    def __init__(self) -> None:
        from livekit import rtc  # a large import, only for the installations that use it

        self._rtc = rtc
        self._apm = rtc.AudioProcessingModule(echo_cancellation=True)

    def process(self, mic: np.ndarray, far: np.ndarray) -> np.ndarray:
        rtc = self._rtc
        self._apm.process_reverse_stream(rtc.AudioFrame(far.astype("<i2").tobytes(), RATE, 1, FRAME))
        frame = rtc.AudioFrame(mic.astype("<i2").tobytes(), RATE, 1, FRAME)
        # The reference is already laid where it plays; what is left (converters, room, the
        # capture side) AEC3 estimates itself, so there is no better figure to give here.
        self._apm.set_stream_delay_ms(0)
        self._apm.process_stream(frame)
        return np.frombuffer(bytes(frame.data), dtype="<i2")


CancellerFactory = Callable[[], Canceller]


class EchoCanceller:
    """The capture thread's echo step: ``process`` each period, then ``account`` the VAD's verdict."""

    def __init__(
        self,
        reference: RenderReference,
        figures: EchoState,
        factory: CancellerFactory = WebRtcCanceller,
    ) -> None:
        self.reference = reference
        self.figures = figures  # what capture reports with its heartbeat
        self.canceller = factory()
        figures.cancelling = True
        self._cursor: int | None = None
        self._off_ms = 0.0  # how long the stamps have differed from the count by more than RESYNC_MS
        self._pending = np.zeros(0, dtype=np.int16)  # microphone samples short of a 10 ms frame
        self._ready = np.zeros(0, dtype=np.int16)  # cleaned samples not yet handed out
        self._far_active = False
        #: The last period was only the residue of the box's voice: silence to the VAD.
        self.residual_only = False
        self._far_quiet_ms = float(ONSET_AFTER_QUIET_MS)  # the first sound is an onset
        self._guard_ms: float | None = None  # how long the current guard has held; None: no guard
        self._period_samples = 0
        self._locked = False  # the canceller has shown it removes the box's voice
        self._lock_run = 0
        self._mic_energy = 0.0
        self._out_energy = 0.0
        self._erle_mic = 0.0
        self._erle_out = 0.0
        self._erle_s = 0.0
        self._unconfirmed: deque[tuple[float, float, float]] = deque()  # mic, out energy, seconds
        self._unconfirmed_s = 0.0  # their seconds
        self._guarded = False  # the last period went out as silence (the onset guard)

    def process(self, pcm: bytes, end_ns: int, period_ns: int) -> bytes:
        """The period with the speaker's echo removed (same length; S16_LE mono 16 kHz)."""
        mic = np.frombuffer(pcm, dtype="<i2")
        self._align(position(end_ns - period_ns), period_ns / 1e6)
        self._pending = np.concatenate([self._pending, mic])
        out, far_sq, mic_sq, out_sq, frames = [], 0.0, 0.0, 0.0, 0
        while len(self._pending) >= FRAME:
            frame, self._pending = self._pending[:FRAME], self._pending[FRAME:]
            assert self._cursor is not None
            far = self.reference.read(self._cursor, FRAME)
            self._cursor += FRAME
            cleaned = self.canceller.process(frame, far)
            out.append(cleaned)
            far_sq += _energy(far)
            mic_sq += _energy(frame)
            out_sq += _energy(cleaned)
            frames += 1
        self._ready = np.concatenate([self._ready, *out])
        self.figures.reference_late_s = round(self.reference.late_samples / RATE, 3)
        self._far_active = frames > 0 and math.sqrt(far_sq / (frames * FRAME)) > FAR_ACTIVE_RMS
        self._mic_energy, self._out_energy = mic_sq, out_sq
        self._period_samples = frames * FRAME
        self.residual_only = self._far_active and out_sq * 10 ** (RESIDUAL_DB / 10) < mic_sq
        if self.residual_only:
            self.figures.residual_s = round(self.figures.residual_s + len(mic) / RATE, 3)
        # Periods that are not whole 10 ms frames (say 15 ms) leave a remainder for the next
        # one: the stream then runs that much behind, once, starting with a little silence.
        handed, self._ready = self._ready[: len(mic)], self._ready[len(mic) :]
        if len(handed) < len(mic):
            handed = np.concatenate([np.zeros(len(mic) - len(handed), dtype=np.int16), handed])
        self._guarded = self._onset_guarded(len(mic) * 1000 / RATE)
        if self._guarded:
            return bytes(len(pcm))
        return handed.astype("<i2").tobytes()

    @property
    def box_audible(self) -> bool:
        """The box's voice, or its echo's tail, can be in the microphone: while it plays, through
        its short pauses, and ``ECHO_TAIL_MS`` after (the room carries it on a little)."""
        return self._far_active or self._far_quiet_ms < ECHO_TAIL_MS

    def _onset_guarded(self, period_ms: float) -> bool:
        """Whether this period falls in the guard at the start of the box's speech (above)."""
        if self._far_active:
            # Locked on: it takes RESIDUAL_DB out of the box's voice, or leaves nothing to hear.
            quiet_out = self._out_energy < QUIET_OUT_RMS**2 * self._period_samples
            self._lock_run = self._lock_run + 1 if self.residual_only or quiet_out else 0
            if self._far_quiet_ms >= ONSET_AFTER_QUIET_MS:  # an answer starts
                self._guard_ms, self._lock_run = 0.0, 0
            self._far_quiet_ms = 0.0
        else:
            self._far_quiet_ms += period_ms
        if self._guard_ms is None:
            return False
        locked = self._lock_run >= LOCK_PERIODS
        self._locked = self._locked or locked
        self._guard_ms += period_ms
        longest = ONSET_GUARD_MAX_MS if self._locked else math.inf
        if (self._guard_ms > ONSET_GUARD_MS and locked) or self._guard_ms > longest:
            self._guard_ms = None
            return False
        if self._far_quiet_ms >= ONSET_AFTER_QUIET_MS:
            self._guard_ms = None  # the answer ended before the canceller showed anything
            return False
        self.figures.onset_guard_s = round(self.figures.onset_guard_s + period_ms / 1000, 3)
        return True

    def account(self, speaking: bool, seconds: float) -> None:
        """The VAD's verdict on the cleaned period: double talk, or a moment for measuring ERLE."""
        if not self._far_active:
            return
        f = self.figures
        f.far_s = round(f.far_s + seconds, 3)
        if speaking:
            f.double_talk_s = round(f.double_talk_s + seconds, 3)
        f.double_talk_ratio = round(f.double_talk_s / f.far_s, 4)
        if speaking:
            self._unconfirmed.clear()  # the start of what the VAD now hears as speech
            self._unconfirmed_s = 0.0
            return
        if self._guarded:
            return  # none of it reached the session; the guard has its own figure
        # A period counts only once the VAD has had time to start speech on it: a person's
        # first words over the box are "not speech" to it for a while (the over-speaker hold).
        self._unconfirmed.append((self._mic_energy, self._out_energy, seconds))
        self._unconfirmed_s += seconds
        while self._unconfirmed_s > ERLE_CONFIRM_S:
            mic_energy, out_energy, held_s = self._unconfirmed.popleft()
            self._unconfirmed_s -= held_s
            self._add_to_erle(mic_energy, out_energy, held_s)

    def _add_to_erle(self, mic_energy: float, out_energy: float, seconds: float) -> None:
        keep = max(0.0, 1.0 - seconds / ERLE_WINDOW_S)  # an exponential window of ERLE_WINDOW_S
        self._erle_mic = self._erle_mic * keep + mic_energy
        self._erle_out = self._erle_out * keep + out_energy
        self._erle_s += seconds
        if self._erle_s >= ERLE_MIN_S and self._erle_mic > 0:
            self.figures.erle_db = round(10 * math.log10(self._erle_mic / max(self._erle_out, 1.0)), 1)

    def _align(self, start: int, period_ms: float) -> None:
        expected = None if self._cursor is None else self._cursor + len(self._pending)
        if expected is not None:
            off = abs(start - expected)
            if off <= RESYNC_MS * RATE // 1000:
                self._off_ms = 0.0
                return
            self._off_ms += period_ms
            if off <= RESYNC_AT_ONCE_MS * RATE // 1000 and self._off_ms < RESYNC_AFTER_MS:
                return
            self.figures.resyncs += 1
        self._off_ms = 0.0
        self._cursor = start - len(self._pending)


def _energy(samples: np.ndarray) -> float:
    x = samples.astype(np.float64)
    return float(np.dot(x, x))
