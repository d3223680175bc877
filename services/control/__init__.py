"""The control process: HTTP API, captions screen and admin page, metrics; the bus's view of the box."""

from services.control.service import ControlService

SERVICE = ControlService

__all__ = ["SERVICE", "ControlService"]
