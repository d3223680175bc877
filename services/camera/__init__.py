"""The camera process: samples the few frames worth their tokens and publishes ``video.frame``.

- ``sources/``: the frame-source seam (picamera2, V4L2 webcams, files);
- ``policy.py``: which frames go (rate, speech, scene change);
- ``pictures.py``: token estimate, sizing to the budget, JPEG ≤ 500 KB;
- ``sampler.py``: the thread that owns the camera; ``service.py``: the lifecycle.

What cameras the machine has is ``daemon/cameras.py`` (``tolk devices``, ``/api/devices``).
"""

from services.camera.service import CameraService

SERVICE = CameraService

__all__ = ["SERVICE", "CameraService"]
