"""The cameras this machine has: what to write in ``[camera] source``, and why one cannot serve.

V4L2 devices are asked directly with the two read-only ioctls every V4L2 driver answers
(``VIDIOC_QUERYCAP``, ``VIDIOC_ENUM_FMT``): listing must not start a capture, and must work
while the camera process holds the camera. Nodes that are not cameras (metadata, codecs, the
Pi's own pipeline) are left out. The Raspberry Pi camera is asked through picamera2 in a child
process, so that the one asking (control, on each admin page) does not keep libcamera loaded;
where picamera2 cannot load, the entry says why. The camera process opens its sources with the
same checks (``device_problem``, ``load_picamera2``).
"""

from __future__ import annotations

import ctypes
import dataclasses
import errno
import fcntl
import glob
import importlib
import importlib.util
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from types import ModuleType
from typing import Any

_VIDIOC_QUERYCAP = 0x80685600  # _IOR('V', 0, struct v4l2_capability)
_VIDIOC_ENUM_FMT = 0xC0405602  # _IOWR('V', 2, struct v4l2_fmtdesc)
_CAP_VIDEO_CAPTURE = 0x00000001
_CAP_DEVICE_CAPS = 0x80000000
_BUF_TYPE_VIDEO_CAPTURE = 1
_MAX_FORMATS = 64
#: Drivers of the Raspberry Pi's own camera pipeline and codecs: they show up as /dev/video*
#: but are used through libcamera (source "picamera2"), never opened as a webcam.
_PI_INTERNAL_DRIVERS = frozenset({"unicam", "rp1-cfe", "pispbe", "bcm2835-isp", "bcm2835-codec", "rpivid"})
#: libcamera may take a few seconds to enumerate a camera on a busy Pi.
_PI_PROBE_TIMEOUT_S = 20.0
_PI_CAMERA = "Raspberry Pi camera"


class SourceError(Exception):
    """A camera that cannot be opened or stopped working; the message says why, for the status."""


@dataclass(frozen=True)
class CameraInfo:
    source: str  # the value for [camera] source
    name: str
    usable: bool
    detail: str  # formats offered, or why it cannot be used


def device_problem(device: str) -> str | None:
    """Why the V4L2 node ``device`` cannot be opened, in words, or None when it can be."""
    try:
        fd = os.open(device, os.O_RDWR | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return f"{device} does not exist (camera unplugged?)"
        if exc.errno in (errno.EACCES, errno.EPERM):
            return f"{device}: permission denied (is the user in the 'video' group?)"
        return f"{device}: {exc.strerror}"
    os.close(fd)
    return None


def load_picamera2() -> ModuleType:
    """The picamera2 module, or SourceError saying why it cannot be used here."""
    try:
        return importlib.import_module("picamera2")
    except ModuleNotFoundError as exc:
        if exc.name == "picamera2":
            raise SourceError(
                "picamera2 is not installed (tolk's 'picamera' extra; "
                "on Raspberry Pi OS: apt install python3-picamera2)"
            ) from None
        raise SourceError(
            f"picamera2 cannot load: {exc} (libcamera and its Python bindings come with Raspberry Pi OS: "
            "apt install python3-picamera2)"
        ) from None
    except (ImportError, OSError, RuntimeError) as exc:
        raise SourceError(f"picamera2 cannot load: {exc}") from None


def camera_infos(module: ModuleType) -> list[dict[str, Any]]:
    """libcamera's list of cameras (model, location, id) as picamera2 reports it."""
    try:
        infos: list[dict[str, Any]] = module.Picamera2.global_camera_info()
    except (RuntimeError, OSError) as exc:
        raise SourceError(f"libcamera cannot list cameras: {exc}") from None
    return infos


def list_cameras() -> list[CameraInfo]:
    """Every camera found: V4L2 webcams, then the Raspberry Pi camera (or why it is unavailable)."""
    webcams = [info for node in _video_nodes() if (info := _v4l2_camera(node)) is not None]
    return webcams + _pi_cameras()


# --- V4L2 -------------------------------------------------------------------------------------


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


# --- the Raspberry Pi camera ------------------------------------------------------------------


def _pi_cameras() -> list[CameraInfo]:
    if importlib.util.find_spec("picamera2") is None:
        try:
            load_picamera2()  # says why in its own words (not installed)
        except SourceError as exc:
            return [CameraInfo("picamera2", _PI_CAMERA, False, str(exc))]
    try:
        child = subprocess.run(
            [sys.executable, "-m", __name__], capture_output=True, text=True, timeout=_PI_PROBE_TIMEOUT_S, check=True
        )
        return [CameraInfo(**info) for info in json.loads(child.stdout)]
    except subprocess.TimeoutExpired:
        why = f"libcamera did not list its cameras within {_PI_PROBE_TIMEOUT_S:.0f} s"
    except subprocess.CalledProcessError as exc:
        said = (exc.stderr or "").strip().splitlines()
        why = f"the camera probe failed: {said[-1] if said else f'exit status {exc.returncode}'}"
    except (OSError, ValueError, TypeError) as exc:
        why = f"the camera probe failed: {exc}"
    return [CameraInfo("picamera2", _PI_CAMERA, False, why)]


def _pi_cameras_here() -> list[CameraInfo]:
    try:
        infos = camera_infos(load_picamera2())
    except SourceError as exc:
        return [CameraInfo("picamera2", _PI_CAMERA, False, str(exc))]
    if not infos:
        return [CameraInfo("picamera2", _PI_CAMERA, False, "picamera2 loads, but libcamera sees no camera")]
    out = []
    for number, info in enumerate(infos):
        detail = f"libcamera id {info.get('Id', '?')}" + ("" if number == 0 else "; tolk uses the first camera")
        out.append(CameraInfo("picamera2", str(info.get("Model", "camera")), number == 0, detail))
    return out


if __name__ == "__main__":
    print(json.dumps([dataclasses.asdict(c) for c in _pi_cameras_here()]))
