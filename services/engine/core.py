"""The engine's models, loaded once per process, and the one worker thread that runs them.

Recognition, translation and synthesis are CPU-bound and hold the cores for seconds: they run one
at a time on a dedicated thread, so the event loop keeps reading the sockets (audio keeps
arriving, ``error`` events still go out) and two connections never fight over the cores.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from daemon.config import EngineConfig
from services.engine.model import install_whisper
from services.engine.translate import SpeechTranslator
from services.engine.tts import Speaker

log = logging.getLogger("tolk.engine")
T = TypeVar("T")


@dataclass
class StageTimes:
    """Seconds of compute per stage, and seconds of audio they handled (for real-time factors)."""

    seconds: dict[str, float] = field(default_factory=dict)
    audio_s: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, seconds: float, audio_s: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.audio_s[stage] = self.audio_s.get(stage, 0.0) + audio_s


class Engine:
    def __init__(self, cfg: EngineConfig, state_dir: Path) -> None:
        self.cfg = cfg
        started = time.monotonic()
        model_dir = install_whisper(cfg.model_dir or state_dir / "engine")
        self.translator = SpeechTranslator(model_dir, cfg.threads, cfg.max_decode_tokens, cfg.marian_dir)
        self.speaker = Speaker(cfg.threads)
        self.load_s = time.monotonic() - started
        self.stages = StageTimes()
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="engine-models")
        log.info("engine models loaded from %s in %.1f s", model_dir, self.load_s)
        if cfg.marian_dir is not None:
            pairs = ", ".join(f"{s}->{t}" for s, t in sorted(self.translator.marian_pairs())) or "none yet"
            log.info("Marian pairs in %s: %s (each loaded on its first utterance)", cfg.marian_dir, pairs)

    async def run(self, stage: str, audio_s: float, fn: Callable[[], T]) -> T:
        """``fn`` on the model thread; its compute time is counted against ``stage``."""

        def timed() -> T:
            started = time.perf_counter()
            try:
                return fn()
            finally:
                self.stages.add(stage, time.perf_counter() - started, audio_s)

        return await asyncio.get_running_loop().run_in_executor(self._worker, timed)

    def close(self) -> None:
        self._worker.shutdown(wait=False, cancel_futures=True)
