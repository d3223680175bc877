"""What hardware the box can see, for ``GET /api/devices`` and the admin page's choices.

The box's one listing (``daemon.devices``, which ``tolk devices`` prints too), in the API's
shape: ALSA's PCM names by direction (``default`` always first: alsa-lib always defines it),
the V4L2 cameras, and whether a Raspberry Pi camera answers; anything that could not be listed
is named in ``problems``.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from daemon import devices
from daemon.config import Config


class Camera(BaseModel):
    source: str = Field(description='The [camera] source value that selects it, e.g. "v4l2:/dev/video0".')
    name: str = Field(description="The driver's name for it.")
    usable: bool = Field(True, description="False when it cannot be opened (the detail says why).")
    detail: str = Field("", description="The formats it offers, or why it cannot be used.")


class ConfiguredDevices(BaseModel):
    capture_device: str
    playback_device: str
    camera: str


class DevicesReport(BaseModel):
    capture: list[str] = Field(description="ALSA PCM names that can capture; 'default' first.")
    playback: list[str] = Field(description="ALSA PCM names that can play; 'default' first.")
    cameras: list[Camera] = Field(description="V4L2 cameras found (video capture nodes under /dev/video*).")
    picamera2: bool = Field(description="Whether libcamera (through picamera2) lists a Raspberry Pi camera.")
    configured: ConfiguredDevices
    problems: list[str] = Field(default_factory=list, description="Anything that could not be listed, and why.")


def list_devices(cfg: Config) -> DevicesReport:
    """Blocking (alsa-lib reads its config files, the cameras are asked): call it from a worker thread."""
    listing = devices.list_devices()
    return DevicesReport(
        capture=listing.names("capture"),
        playback=listing.names("playback"),
        cameras=[
            Camera(source=c.source, name=c.name, usable=c.usable, detail=c.detail)
            for c in listing.cameras
            if c.source.startswith("v4l2:")
        ],
        picamera2=any(c.source == "picamera2" and c.usable for c in listing.cameras),
        configured=ConfiguredDevices(
            capture_device=cfg.audio.capture_device,
            playback_device=cfg.audio.playback_device,
            camera=cfg.camera.source,
        ),
        problems=listing.problems,
    )
