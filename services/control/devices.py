"""What hardware the box can see, for ``GET /api/devices`` and the admin page's choices.

Only what was really found is listed: ALSA's PCM names (``alsaaudio.pcms()``, which reads
alsa-lib's device hints and the user's asoundrc), V4L2 cameras present as ``/dev/video*``,
and whether picamera2's libcamera can be imported. ``default`` is always offered because
alsa-lib always defines it; anything that could not be listed is named in ``problems``.
"""

from __future__ import annotations

import glob
import importlib.util
from pathlib import Path

import alsaaudio
from pydantic import BaseModel, Field

from daemon.config import Config

VIDEO_GLOB = "/dev/video*"
SYSFS_V4L = Path("/sys/class/video4linux")


class Camera(BaseModel):
    source: str = Field(description='The [camera] source value that selects it, e.g. "v4l2:/dev/video0".')
    name: str = Field(description="The driver's name for it, when the kernel gives one.")


class ConfiguredDevices(BaseModel):
    capture_device: str
    playback_device: str
    camera: str


class DevicesReport(BaseModel):
    capture: list[str] = Field(description="ALSA PCM names that can capture; 'default' first.")
    playback: list[str] = Field(description="ALSA PCM names that can play; 'default' first.")
    cameras: list[Camera] = Field(description="Video devices found under /dev/video*.")
    picamera2: bool = Field(description="Whether picamera2 and libcamera can be imported (a Pi camera stack).")
    configured: ConfiguredDevices
    problems: list[str] = Field(default_factory=list, description="Anything that could not be listed, and why.")


def _pcms(kind: int, what: str, problems: list[str]) -> list[str]:
    try:
        names = list(alsaaudio.pcms(kind))
    except alsaaudio.ALSAAudioError as exc:
        problems.append(f"cannot list ALSA {what} devices: {exc}")
        names = []
    return ["default", *(n for n in names if n != "default")]


def _cameras() -> list[Camera]:
    cameras = []
    for path in sorted(glob.glob(VIDEO_GLOB), key=lambda p: (len(p), p)):
        node = Path(path).name
        try:
            name = (SYSFS_V4L / node / "name").read_text(encoding="utf-8").strip()
        except OSError:
            name = ""
        cameras.append(Camera(source=f"v4l2:{path}", name=name))
    return cameras


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def list_devices(cfg: Config) -> DevicesReport:
    """Blocking (alsa-lib reads its config files): call it from a worker thread."""
    problems: list[str] = []
    return DevicesReport(
        capture=_pcms(alsaaudio.PCM_CAPTURE, "capture", problems),
        playback=_pcms(alsaaudio.PCM_PLAYBACK, "playback", problems),
        cameras=_cameras(),
        picamera2=_importable("picamera2") and _importable("libcamera"),
        configured=ConfiguredDevices(
            capture_device=cfg.audio.capture_device,
            playback_device=cfg.audio.playback_device,
            camera=cfg.camera.source,
        ),
        problems=problems,
    )
