"""The sampler thread: owns the camera, reads every frame, sends the few worth sending.

One thread per open camera, because camera reads block (a V4L2 dequeue, a libcamera request)
and a source object belongs to the thread that uses it. The thread opens the source, reads
it, asks the policy about each frame, encodes and publishes the chosen ones on the bulk
socket; when the camera vanishes or fails it says why and retries with backoff, for as long
as the service runs. The event loop only starts, stops and reads it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from daemon.backoff import Backoff
from daemon.messages import VideoFrame
from services.camera.pictures import FrameError, Picture, encode
from services.camera.policy import Decision, SamplingPolicy
from services.camera.sources import FrameSource, SourceError, SourceSpec

COUNTERS = (
    "frames_read",
    "frames_bad",
    "frames_unchanged",
    "frames_published",
    "pixels_published",
    "bytes_published",
    "image_tokens_estimate",
    "camera_failures",
)
#: A picture that cannot be decoded is skipped; this pause keeps a source of nothing but bad
#: pictures from spinning the CPU.
BAD_FRAME_PAUSE_S = 0.1


class SpeechState:
    """Whether someone speaks, and how many utterances began: written by the loop, read by the sampler."""

    def __init__(self) -> None:
        self.speaking = False
        self.utterance = 0

    def set(self, speaking: bool) -> bool:
        """Record capture's speech state; True when it changed."""
        if speaking == self.speaking:
            return False
        if speaking:
            self.utterance += 1
        self.speaking = speaking
        return True


class Sampler(threading.Thread):
    def __init__(
        self,
        spec: SourceSpec,
        opener: Callable[[SourceSpec], FrameSource],
        policy: SamplingPolicy,
        speech: SpeechState,
        publish: Callable[[VideoFrame], None],
        counters: dict[str, float],
        on_change: Callable[[], None],
        on_frame: Callable[[], None],
        on_crash: Callable[[BaseException], None],
        log: logging.Logger,
        source: FrameSource | None = None,
        problem: str | None = None,
    ) -> None:
        super().__init__(name="camera-sampler", daemon=True)
        self.spec = spec
        self._opener = opener
        self.policy = policy
        self.speech = speech
        self._publish = publish
        self.counters = counters
        self._on_change = on_change  # the source opened or failed (status and state follow)
        self._on_frame = on_frame
        self._on_crash = on_crash
        self.log = log
        self._halt = threading.Event()
        self._backoff = Backoff(max_s=15.0)
        self._source = source
        #: What the open camera is, or why there is none (read by the status line).
        self.description = source.description if source is not None else ""
        self.problem: str | None = problem
        self.retry_at = 0.0
        self._announced: str | None = None

    def stop(self) -> None:
        self._halt.set()

    @property
    def stopping(self) -> bool:
        return self._halt.is_set()

    def run(self) -> None:
        try:
            self._keep_sampling()
        except Exception as exc:  # a bug, not a camera problem: the service exits for systemd to restart it
            self._on_crash(exc)

    def _keep_sampling(self) -> None:
        if self.problem is not None:
            self._wait_to_retry(self.problem)
        while not self._halt.is_set():
            source, self._source = self._source, None
            if source is None:
                try:
                    source = self._opener(self.spec)
                except SourceError as exc:
                    self._wait_to_retry(str(exc))
                    continue
            self._opened(source)
            try:
                self._sample(source)
            except SourceError as exc:
                self._wait_to_retry(str(exc))
            finally:
                try:
                    source.close()
                except (SourceError, OSError, RuntimeError) as exc:
                    self.log.warning("closing the camera: %s", exc)

    def _opened(self, source: FrameSource) -> None:
        if self._announced is not None:
            self.log.info("camera back: %s", source.description)
        else:
            self.log.info("camera open: %s", source.description)
        self.description, self.problem, self._announced = source.description, None, None
        self._backoff.reset()
        self._on_change()

    def _wait_to_retry(self, reason: str) -> None:
        self.counters["camera_failures"] += 1
        delay = self._backoff.next_delay()
        self.problem, self.retry_at = reason, time.monotonic() + delay
        if reason != self._announced:  # a camera that stays unplugged is logged once, not every retry
            self.log.error("camera %r unavailable: %s; retrying with backoff", self.spec.source, reason)
            self._announced = reason
        self._on_change()
        self._halt.wait(delay)

    def _sample(self, source: FrameSource) -> None:
        while not self._halt.is_set():
            try:
                frame = source.read()
            except FrameError as exc:
                self._bad(exc)
                continue
            wait_s = (frame.not_before - time.monotonic_ns()) / 1e9 if frame.not_before else 0.0
            if wait_s > 0 and self._halt.wait(wait_s):
                return
            self.counters["frames_read"] += 1
            self._on_frame()
            try:
                self._consider(frame.picture, frame.t)
            except FrameError as exc:
                self._bad(exc)

    def _consider(self, picture: Picture, t: int) -> None:
        speech = self.speech
        decision = self.policy.consider(t, speech.speaking, speech.utterance, picture.thumbnail)
        if decision is Decision.UNCHANGED:
            self.counters["frames_unchanged"] += 1
        if not decision.send:
            return
        settings = self.policy.settings
        out = encode(picture, settings.max_tokens, settings.jpeg_quality)
        if self._halt.is_set():
            return  # a newer sampler may own the socket by now
        self._publish(VideoFrame(jpeg=out.jpeg, width=out.width, height=out.height, t=t))
        self.counters["frames_published"] += 1
        self.counters["pixels_published"] += out.width * out.height
        self.counters["bytes_published"] += len(out.jpeg)
        self.counters["image_tokens_estimate"] += out.tokens
        self.log.debug(
            "frame sent (%s): %dx%d, %d bytes, %g tokens",
            *(decision.value, out.width, out.height, len(out.jpeg), out.tokens),
        )

    def _bad(self, exc: FrameError) -> None:
        self.counters["frames_bad"] += 1
        if self.counters["frames_bad"] == 1 or self.log.isEnabledFor(logging.DEBUG):
            self.log.warning("skipping a frame: %s", exc)
        self._halt.wait(BAD_FRAME_PAUSE_S)
