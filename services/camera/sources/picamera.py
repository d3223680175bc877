"""``picamera2``: the Raspberry Pi camera, through libcamera.

picamera2 is an optional extra and is imported only here, only when this source is opened or
the cameras are listed: off a Pi (or without Raspberry Pi OS's libcamera bindings) the import
fails with ``No module named 'libcamera'``, and that reason is what the status and
``tolk devices`` show.
"""

from __future__ import annotations

import importlib
import time
from types import ModuleType
from typing import Any

from services.camera.pictures import Picture, fit_size
from services.camera.sources import Frame, SourceError

CAMERA_FPS = 10


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


class PiCameraSource:
    def __init__(self, max_tokens: float) -> None:
        module = load_picamera2()
        infos = camera_infos(module)
        if not infos:
            raise SourceError("libcamera sees no camera (is the ribbon cable seated and the camera enabled?)")
        try:
            cam = module.Picamera2(0)
        except (RuntimeError, OSError, IndexError) as exc:
            raise SourceError(f"cannot open the Pi camera: {exc}") from None
        try:
            sensor_w, sensor_h = cam.sensor_resolution
            width, height = fit_size(sensor_w, sensor_h, max_tokens)
            # "RGB888" is libcamera's name for 24-bit pixels stored B, G, R.
            config = cam.create_video_configuration(
                main={"size": (width, height), "format": "RGB888"},
                buffer_count=2,
                controls={"FrameRate": CAMERA_FPS},
            )
            cam.align_configuration(config)
            cam.configure(config)
            cam.start()
        except (RuntimeError, OSError, ValueError) as exc:
            cam.close()
            raise SourceError(f"cannot start the Pi camera: {exc}") from None
        self._cam = cam
        size = config["main"]["size"]
        model = infos[0].get("Model", "camera")
        self.description = f"Pi camera {model} ({size[0]}×{size[1]}, {CAMERA_FPS} fps)"

    def read(self) -> Frame:
        try:
            pixels = self._cam.capture_array("main")
        except (RuntimeError, OSError, TimeoutError) as exc:
            raise SourceError(f"the Pi camera stopped delivering frames: {exc}") from None
        return Frame(Picture(pixels=pixels, bgr=True), time.monotonic_ns())

    def close(self) -> None:
        try:
            self._cam.stop()
        finally:
            self._cam.close()
