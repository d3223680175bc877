"""The cameras this machine has, for ``tolk devices``: what to write in ``[camera] source``.

V4L2 devices are asked directly with the two read-only ioctls every V4L2 driver answers
(``VIDIOC_QUERYCAP``, ``VIDIOC_ENUM_FMT``): listing must not start a capture, and must work
while the camera process holds the camera. The Raspberry Pi camera is asked through picamera2;
where that cannot load, the entry says why.
"""

from __future__ import annotations

import ctypes
import fcntl
import glob
import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from services.camera.sources import SourceError
from services.camera.sources.picamera import camera_infos, load_picamera2
from services.camera.sources.webcam import device_problem

if TYPE_CHECKING:
    from daemon.devices import Device

_VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability)
_VIDIOC_ENUM_FMT = 0xC0405602  # _IOWR('V', 2, struct v4l2_fmtdesc)
_CAP_VIDEO_CAPTURE = 0x00000001
_CAP_DEVICE_CAPS = 0x80000000
_BUF_TYPE_VIDEO_CAPTURE = 1
_MAX_FORMATS = 64
#: Drivers of the Raspberry Pi's own camera pipeline and codecs: they show up as /dev/video*
#: but are used through libcamera (source "picamera2"), never opened as a webcam.
_PI_INTERNAL_DRIVERS = frozenset({"unicam", "rp1-cfe", "pispbe", "bcm2835-isp", "bcm2835-codec", "rpivid"})


class _Capability(ctypes.Structure):
    _fields_ = [
        ("driver", ctypes.c_char * 16),
        ("card", ctypes.c_char * 32),
        ("bus_info", ctypes.c_char * 32),
        ("version", ctypes.c_uint32),
        ("capabilities", ctypes.c_uint32),
        ("device_caps", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 3),
    ]


class _FormatDesc(ctypes.Structure):
    _fields_ = [
        ("index", ctypes.c_uint32),
        ("type", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("description", ctypes.c_char * 32),
        ("pixelformat", ctypes.c_uint32),
        ("mbus_code", ctypes.c_uint32),
        ("reserved", ctypes.c_uint32 * 3),
    ]


@dataclass(frozen=True)
class CameraInfo:
    source: str  # the value for [camera] source
    name: str
    usable: bool
    detail: str  # formats offered, or why it cannot be used


def _fourcc(code: int) -> str:
    return code.to_bytes(4, "little").decode("ascii", "replace").strip()


def _v4l2_camera(device: str) -> CameraInfo | None:
    source = f"v4l2:{device}"
    if problem := device_problem(device):
        return CameraInfo(source, "V4L2 device", False, problem)
    fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    try:
        cap = _Capability()
        try:
            fcntl.ioctl(fd, _VIDIOC_QUERYCAP, cap)
        except OSError as exc:
            return CameraInfo(source, "V4L2 device", False, f"does not answer VIDIOC_QUERYCAP: {exc.strerror}")
        caps = cap.device_caps if cap.capabilities & _CAP_DEVICE_CAPS else cap.capabilities
        driver = cap.driver.decode(errors="replace")
        if not caps & _CAP_VIDEO_CAPTURE or driver in _PI_INTERNAL_DRIVERS:
            return None  # a metadata node, an output, a codec, or the Pi's libcamera pipeline
        formats: list[str] = []
        for index in range(_MAX_FORMATS):
            desc = _FormatDesc(index=index, type=_BUF_TYPE_VIDEO_CAPTURE)
            try:
                fcntl.ioctl(fd, _VIDIOC_ENUM_FMT, desc)
            except OSError:
                break  # EINVAL past the last format
            formats.append(_fourcc(desc.pixelformat))
    finally:
        os.close(fd)
    name = f"{cap.card.decode(errors='replace')} ({driver})"
    if not formats:
        return CameraInfo(source, name, False, "offers no capture formats")
    mjpeg = "MJPG" in formats or "JPEG" in formats
    detail = f"formats {', '.join(formats)}" + ("; MJPEG is taken as the camera sends it" if mjpeg else "")
    return CameraInfo(source, name, True, detail)


def _video_nodes() -> list[str]:
    def number(path: str) -> int:
        match = re.search(r"(\d+)$", path)
        return int(match.group(1)) if match else 0

    return sorted(glob.glob("/dev/video*"), key=number)


def _pi_cameras() -> list[CameraInfo]:
    try:
        module = load_picamera2()
        infos = camera_infos(module)
    except SourceError as exc:
        return [CameraInfo("picamera2", "Raspberry Pi camera", False, str(exc))]
    if not infos:
        return [CameraInfo("picamera2", "Raspberry Pi camera", False, "picamera2 loads, but libcamera sees no camera")]
    out = []
    for number, info in enumerate(infos):
        detail = f"libcamera id {info.get('Id', '?')}" + ("" if number == 0 else "; tolk uses the first camera")
        out.append(CameraInfo("picamera2", str(info.get("Model", "camera")), number == 0, detail))
    return out


def list_cameras() -> list[CameraInfo]:
    """Every camera found: V4L2 webcams, then the Raspberry Pi camera (or why it is unavailable)."""
    webcams = [info for node in _video_nodes() if (info := _v4l2_camera(node)) is not None]
    return webcams + _pi_cameras()


def camera_devices() -> list[Device]:
    """The cameras as ``tolk devices`` lists them: the source value, and what it is or why not."""
    from daemon.devices import Device  # imports alsa-lib: only for the listing, not in the camera process

    cameras = list_cameras()
    devices = [
        Device("camera", c.source, f"{c.name}: {c.detail}" if c.usable else f"{c.name}, not usable: {c.detail}")
        for c in cameras
    ]
    if not any(c.source.startswith("v4l2:") for c in cameras):
        devices.insert(0, Device("camera", "v4l2:/dev/videoN", "no V4L2 webcam found (/dev/video*)"))
    devices.append(Device("camera", "file:/path", "a still image, a folder of images or a video (tests, demos)"))
    return devices
