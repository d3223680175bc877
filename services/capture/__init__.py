"""``tolk service capture``: the microphone, 16 kHz mono S16_LE, one bus message per period."""

from services.capture.service import CaptureService

SERVICE = CaptureService

__all__ = ["SERVICE", "CaptureService"]
