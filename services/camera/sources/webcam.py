"""``v4l2:/dev/videoN``: a USB (UVC) or other V4L2 webcam, through OpenCV's V4L2 backend.

The camera is asked for MJPEG at about the size the token budget allows and a low frame rate.
When it agrees, frames are taken as the camera's own JPEG bytes (``CAP_PROP_CONVERT_RGB`` off):
nothing is decoded unless the policy looks at a thumbnail, and a frame that already fits the
budget is sent without re-encoding. A camera that offers no MJPEG is read as pixels.
"""

from __future__ import annotations

import time

from daemon.cameras import device_problem
from services.camera.pictures import Picture, fit_size
from services.camera.sources import Frame, SourceError

#: Frames per second asked of the camera: the policy sends at most 2, and a low rate keeps the
#: USB bus and the CPU quiet while still catching the first frame of an utterance within ~100 ms.
CAMERA_FPS = 10
#: JPEG's end-of-image marker: some drivers hand over a whole buffer with padding after it.
_EOI = b"\xff\xd9"


class WebcamSource:
    def __init__(self, device: str, max_tokens: float) -> None:
        if problem := device_problem(device):
            raise SourceError(problem)
        import cv2

        self.device = device
        cap = cv2.VideoCapture(device, cv2.CAP_V4L2)
        if not cap.isOpened():
            cap.release()
            raise SourceError(f"{device} is not a camera OpenCV's V4L2 backend can open")
        mjpg = cv2.VideoWriter.fourcc(*"MJPG")
        width, height = fit_size(1280, 720, max_tokens)
        cap.set(cv2.CAP_PROP_FOURCC, mjpg)
        cap.set(cv2.CAP_PROP_FRAME_WIDTH, width)
        cap.set(cv2.CAP_PROP_FRAME_HEIGHT, height)
        cap.set(cv2.CAP_PROP_FPS, CAMERA_FPS)
        cap.set(cv2.CAP_PROP_BUFFERSIZE, 2)  # a stale frame queued in the driver is worth nothing
        self.mjpeg = int(cap.get(cv2.CAP_PROP_FOURCC)) == mjpg
        if self.mjpeg:
            cap.set(cv2.CAP_PROP_CONVERT_RGB, 0)
        self._cap = cap
        got = f"{int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))}×{int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))}"
        self.description = f"webcam {device} ({got}, {'MJPEG' if self.mjpeg else 'raw'}, {CAMERA_FPS} fps)"

    def read(self) -> Frame:
        ok, buf = self._cap.read()
        t = time.monotonic_ns()
        if not ok or buf is None:
            raise SourceError(device_problem(self.device) or f"{self.device} stopped delivering frames")
        if self.mjpeg:
            data = buf.tobytes()
            end = data.rfind(_EOI)
            return Frame(Picture(data=data[: end + 2] if end >= 0 else data), t)
        return Frame(Picture(pixels=buf, bgr=True), t)

    def close(self) -> None:
        self._cap.release()
