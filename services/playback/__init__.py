"""``tolk service playback``: translated speech from the bus to the speaker, 24 kHz mono S16_LE."""

from services.playback.service import PlaybackService

SERVICE = PlaybackService

__all__ = ["SERVICE", "PlaybackService"]
