"""The camera process: samples the few frames worth their tokens and publishes ``video.frame``.

- ``sources/``: the frame-source seam (picamera2, V4L2 webcams, files);
- ``policy.py``: which frames go (rate, speech, scene change);
- ``pictures.py``: token estimate, sizing to the budget, JPEG ≤ 500 KB;
- ``sampler.py``: the thread that owns the camera; ``service.py``: the lifecycle;
- ``devices.py``: ``list_cameras()`` for ``tolk devices``.
"""

from services.camera.devices import CameraInfo, camera_devices, list_cameras
from services.camera.service import CameraService

SERVICE = CameraService

__all__ = ["SERVICE", "CameraInfo", "CameraService", "camera_devices", "list_cameras"]
