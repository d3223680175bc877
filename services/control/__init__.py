"""The control process: HTTP API (health, status, config), the bus's view of every process."""

from services.control.service import ControlService

SERVICE = ControlService

__all__ = ["SERVICE", "ControlService"]
