"""The realtime session process (``tolk service session``): see ``service.py``."""

from services.session.service import SessionService

SERVICE = SessionService

__all__ = ["SERVICE", "SessionService"]
