"""One capture period, from the device to the bus: echo cancellation, mute, voice activity,
streaming policy, publish.

With ``echo = "aec"`` the canceller comes first, so everything after it (the VAD, the session)
hears the room without the box's own voice. Runs on the capture thread (it owns the bulk
publisher). The VAD sees what the session could get — zeros while muted — so in half duplex
the box's own voice never counts as speech (and never triggers a barge-in). Speech start/stop
goes to ``on_speech`` for the event loop to publish on the state socket, a mute's edges to
``on_mute`` (capture then sends its heartbeat at once: its counters then say when it muted, to the
period, and the status page shows the mute as it begins).
"""

from __future__ import annotations

from collections.abc import Callable

from daemon.bus import Publisher
from daemon.messages import AudioIn
from daemon.vad import SpeechDetector
from services.capture.aec import EchoCanceller
from services.capture.mute import MuteGate
from services.capture.policy import Period, StreamingPolicy
from services.capture.ring import AudioRing

BYTES_PER_SECOND = 16000 * 2

#: The service's counters this thread keeps (created before it starts; only existing keys change).
COUNTERS = (
    "chunks",
    "bytes",
    "muted_chunks",
    "seconds_captured",
    "seconds_sent",
    "utterances",
    "keepalives",
    "vad_windows",
)


class CapturePipeline:
    def __init__(
        self,
        publisher: Publisher,
        gate: MuteGate,
        detector: SpeechDetector,
        policy: StreamingPolicy,
        counters: dict[str, float],
        on_speech: Callable[[bool, int, bool], None],
        rate: int = 16000,
        on_mute: Callable[[bool], None] | None = None,
    ) -> None:
        self.publisher = publisher
        self.gate = gate
        self.detector = detector
        self.policy = policy
        self.counters = counters
        self.on_speech = on_speech
        self.on_mute = on_mute
        self._muted = False
        self.rate = rate
        #: Set by the service for ``echo = "aec"`` (one assignment, read once per period).
        self.echo: EchoCanceller | None = None
        #: What was published lately, replayed to a session that restarted (ring.py).
        self.ring: AudioRing | None = None

    def period(self, data: bytes, t: int, period_ns: int) -> None:
        echo = self.echo
        heard = echo.process(data, t, period_ns) if echo is not None else data
        # Read once, before the mute: the event loop may learn of an answer while the VAD runs,
        # and speech heard unmuted before that is not speech over the answer.
        over_answer = self.gate.speaker
        muted = self.gate.muted(t - period_ns)
        pcm = bytes(len(data)) if muted else heard
        was = self.detector.speaking
        # What the canceller left of the box's own voice is silence to the VAD (aec.py: the residue),
        # and while the box is audible speech must hold longer to start: what leaks comes in bursts.
        quiet = muted or (echo is not None and echo.residual_only)
        self.detector.over_speaker = echo is not None and echo.box_audible
        speaking = self.detector.silence(len(pcm)) if quiet else self.detector.feed(pcm)
        if echo is not None:
            echo.account(speaking, len(data) / BYTES_PER_SECOND)
        if speaking != was:
            self.counters["utterances"] += speaking
            self.on_speech(speaking, t, over_answer)
        counters = self.counters
        counters["chunks"] += 1
        counters["bytes"] += len(data)
        counters["muted_chunks"] += muted
        counters["seconds_captured"] += len(data) / BYTES_PER_SECOND
        counters["vad_windows"] = self.detector.windows
        ring = self.ring
        if ring is not None:
            ring.replay_due(self.publisher)
        for out in self.policy.admit(Period(pcm, t, muted), speaking):
            msg = AudioIn(pcm=out.pcm, t=out.t, rate=self.rate, muted=out.muted)
            self.publisher.publish(msg)
            if ring is not None:
                ring.keep(msg)
            counters["seconds_sent"] += len(out.pcm) / BYTES_PER_SECOND
        counters["keepalives"] = self.policy.keepalives
        if muted != self._muted:  # after the counters: they include this period
            self._muted = muted
            if self.on_mute is not None:
                self.on_mute(muted)
