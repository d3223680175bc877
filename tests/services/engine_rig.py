"""The local engine behind its WebSocket server, on a thread of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

from services.engine.core import Engine
from services.engine.loader import ModelLoader
from services.engine.server import EngineServer


def serving(engine: Engine) -> Iterator[str]:
    """``engine`` behind its WebSocket server on a thread of its own; yields the URL, then stops it."""
    loop = asyncio.new_event_loop()
    server = EngineServer(ModelLoader(engine.cfg, Path(), engine), "127.0.0.1", 0)
    loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, name="engine", daemon=True)
    thread.start()
    try:
        yield server.url
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(15)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
        engine.close()
