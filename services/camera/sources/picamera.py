"""``picamera2``: the Raspberry Pi camera, through libcamera.

picamera2 is an optional extra and is imported only when this source is opened, or the cameras
are listed (``daemon.cameras``, in a child process): off a Pi (or without Raspberry Pi OS's
libcamera bindings) the import fails with ``No module named 'libcamera'``, and that reason is
what the status and ``tolk devices`` show.
"""

from __future__ import annotations

import time

from daemon.cameras import camera_infos, load_picamera2
from services.camera.pictures import Picture, fit_size
from services.camera.sources import Frame, SourceError

CAMERA_FPS = 10


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
