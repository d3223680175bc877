"""``tolk service camera``: frames that help the translation and cost little.

Start-up follows capture's policy: ``start()`` tries the camera once; if it opens, ``READY=1``
follows with it really open; if it does not (unplugged, no libcamera, a wrong path), the
process still comes up ``degraded``, its status says why, and the sampler retries with
backoff. A camera is optional to translation: the rest of the box never waits for it.

Speech start/stop comes from capture's state socket. If capture goes quiet while someone was
speaking (no message at all for a few seconds, heartbeats included) or says it stopped, the
speech is taken as over: a dead capture must not leave the camera sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import ClassVar

from daemon.config import CameraConfig, Config
from daemon.messages import Heartbeat, SpeechActivity, VideoFrame
from daemon.service import Service, ServiceContext
from services.camera.policy import PolicySettings, SamplingPolicy
from services.camera.sampler import COUNTERS, Sampler, SpeechState
from services.camera.sources import FrameSource, SourceError, SourceSpec, open_source

#: How long stop() waits for the sampler to finish its current frame.
SAMPLER_STOP_S = 2.0
#: Without any word from capture for this long, someone "speaking" is taken to have stopped.
CAPTURE_SILENT_S = 5.0
CAPTURE_GONE = frozenset({"stopping", "stopped", "failed"})


def source_spec(camera: CameraConfig) -> SourceSpec:
    return SourceSpec(camera.source, camera.max_tokens, camera.file_fps, camera.file_speed)


class CameraService(Service):
    name = "camera"
    #: The seam to the camera hardware (another backend may swap it).
    source_opener: ClassVar[Callable[[SourceSpec], FrameSource]] = staticmethod(open_source)

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        # Pillow logs every PNG chunk it parses at debug level: noise even in a debug journal.
        logging.getLogger("PIL").setLevel(logging.INFO)
        for key in COUNTERS:
            self.counters[key] = 0
        self.speech = SpeechState()
        self.policy = SamplingPolicy(PolicySettings.from_config(self.config.camera))
        self._sampler: Sampler | None = None
        self._publish_lock = threading.Lock()  # a stopping sampler and its successor share the socket
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        await self._start_sampler(self.config.camera)

    async def run(self) -> None:
        self._update_state()
        await self._follow_speech()

    async def stop(self) -> None:
        await self._stop_sampler()

    async def apply_config(self, new: Config, changed: set[str]) -> None:
        old = self.config.camera
        self.config = new
        if "camera" not in changed:
            return
        self.policy.settings = PolicySettings.from_config(new.camera)
        if source_spec(new.camera) != source_spec(old):
            self.log.info("camera source now %r: reopening", new.camera.source)
            await self._stop_sampler()
            await self._start_sampler(new.camera)
            self._update_state()

    def status(self) -> str:
        camera = self.config.camera
        sampler = self._sampler
        if camera.source == "none" or sampler is None:
            return "camera off"
        if sampler.problem is not None:
            return f"camera {camera.source!r} unavailable: {sampler.problem} (retrying)"
        if camera.when == "always":
            doing = "sampling always"
        else:
            doing = "sampling (speech)" if self.speech.speaking else "waiting for speech"
        sent = int(self.counters["frames_published"])
        return f"{sampler.description}: {doing}; {sent} frames sent, {self.counters['image_tokens_estimate']:g} tokens"

    def is_fresh(self) -> bool:
        # Camera off, or waiting for a camera that is missing: that is the work this process can
        # do (a watchdog restart would not plug the camera in). An open camera must deliver.
        sampler = self._sampler
        return sampler is None or sampler.problem is not None or super().is_fresh()

    # --- the sampler -------------------------------------------------------------------------

    async def _start_sampler(self, camera: CameraConfig) -> None:
        if camera.source == "none":
            self.log.info('camera off ([camera] source = "none")')
            return
        spec = source_spec(camera)
        source: FrameSource | None = None
        problem: str | None = None
        try:
            # Opening a camera can take a second (libcamera, a USB webcam's first negotiation).
            source = await asyncio.to_thread(type(self).source_opener, spec)
        except SourceError as exc:
            problem = str(exc)
            self.log.warning("starting without the camera (%s); it is retried in the background", problem)
        sampler = Sampler(
            spec,
            type(self).source_opener,
            self.policy,
            self.speech,
            self._publish,
            self.counters,
            on_change=self._sampler_changed,
            on_frame=self.mark_fresh,
            on_crash=self._sampler_crashed,
            log=self.log,
            source=source,
            problem=problem,
        )
        self._sampler = sampler
        sampler.start()

    async def _stop_sampler(self) -> None:
        sampler, self._sampler = self._sampler, None
        if sampler is None:
            return
        sampler.stop()
        await asyncio.to_thread(sampler.join, SAMPLER_STOP_S)
        if sampler.is_alive():
            # A read can block in a camera driver; the thread owns the source and ends with the process.
            self.log.warning("camera read still blocked in the driver; leaving it to finish on its own")

    def _publish(self, frame: VideoFrame) -> None:  # on the sampler thread
        with self._publish_lock:
            self.bus.bulk.publish(frame)

    def _sampler_changed(self) -> None:  # on the sampler thread
        self._call_in_loop(self._update_state)

    def _sampler_crashed(self, exc: BaseException) -> None:  # on the sampler thread
        self.log.error("camera sampler failed: %r", exc, exc_info=exc)
        self._call_in_loop(self.fail, exc)

    def _call_in_loop(self, fn: Callable[..., object], *args: object) -> None:
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is already closed at exit
                self._loop.call_soon_threadsafe(fn, *args)

    def _update_state(self) -> None:
        if self.state not in ("ready", "running", "degraded"):
            return  # starting or stopping: the lifecycle's own state stands
        sampler = self._sampler
        self.state = "degraded" if sampler is not None and sampler.problem is not None else "running"

    # --- speech ------------------------------------------------------------------------------

    async def _follow_speech(self) -> None:
        sub = self.bus.subscribe(["capture"], SpeechActivity, Heartbeat)
        while True:
            try:
                # A deadline only while someone speaks; otherwise simply wait.
                msg = await asyncio.wait_for(sub.recv(), CAPTURE_SILENT_S if self.speech.speaking else None)
            except TimeoutError:
                self.log.warning("no word from capture for %.0f s: speech taken as over", CAPTURE_SILENT_S)
                self.speech.set(False)
                continue
            if isinstance(msg, SpeechActivity):
                if self.speech.set(msg.speaking):
                    self.log.debug("speech %s", "started" if msg.speaking else "stopped")
            elif isinstance(msg, Heartbeat) and msg.state in CAPTURE_GONE:
                self.speech.set(False)
