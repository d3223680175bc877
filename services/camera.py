"""``tolk service camera``: frame sampling for the service's image input.

This build samples no frames yet. With ``[camera] source = "none"`` that is the configured
behaviour ("camera off"); any other source is logged as not supported by this build and the
process stays up, idle, so the rest of the box is unaffected and a later config change to
``"none"`` (or a build that supports the source) needs no restart of anything else.
"""

from __future__ import annotations

import asyncio

from daemon.config import CameraConfig, Config
from daemon.service import Service, ServiceContext


class CameraService(Service):
    name = "camera"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.counters["frames_published"] = 0
        self._idle = asyncio.Event()  # never set: run() waits on it without polling

    async def start(self) -> None:
        self._describe(self.config.camera)

    async def run(self) -> None:
        await self._idle.wait()

    async def apply_config(self, new: Config, changed: set[str]) -> None:
        old = self.config.camera
        self.config = new
        if "camera" in changed and new.camera != old:
            self._describe(new.camera)

    def status(self) -> str:
        source = self.config.camera.source
        if source == "none":
            return "camera off"
        return f"camera source {source!r} is not supported by this build yet (idle)"

    def is_fresh(self) -> bool:
        # Publishing nothing is this process's whole job while the camera is off or unsupported;
        # the heartbeat that asks is itself proof that the event loop runs.
        return True

    def _describe(self, camera: CameraConfig) -> None:
        if camera.source == "none":
            self.log.info('camera off ([camera] source = "none")')
        else:
            self.log.warning("camera source %r is not supported by this build yet; no frames are sent", camera.source)


SERVICE = CameraService
