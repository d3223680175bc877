"""A plain websockets client against the simulator, and the audio it sends."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from websockets.asyncio.client import ClientConnection, connect

from services.simulator import Simulator

MODEL = "qwen3-livetranslate-flash-realtime"


AUDIO_SESSION = {
    "modalities": ["text", "audio"],
    "voice": "Cherry",
    "input_audio_format": "pcm16",
    "output_audio_format": "pcm24",
    "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "zh"},
    "translation": {"language": "en"},
}


def speech(seconds: float, amplitude: int = 6000) -> bytes:
    t = np.arange(int(seconds * 16000)) / 16000
    return (amplitude * np.sin(2 * np.pi * 220 * t)).astype("<i2").tobytes()


def silence(seconds: float) -> bytes:
    return bytes(int(seconds * 16000) * 2)


class Client:
    """A minimal protocol client for driving the simulator by hand."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.n = 0

    async def send(self, kind: str, **fields: Any) -> str:
        self.n += 1
        event_id = f"event_test_{self.n}"
        await self.ws.send(json.dumps({"event_id": event_id, "type": kind, **fields}))
        return event_id

    async def recv(self, within_s: float = 5.0) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), within_s))

    async def until(self, kind: str, within_s: float = 10.0) -> list[dict[str, Any]]:
        """Every event up to and including the first of ``kind``."""
        got = []
        while True:
            got.append(await self.recv(within_s))
            if got[-1]["type"] == kind:
                return got

    async def configure(self, session: dict[str, Any] = AUDIO_SESSION) -> dict[str, Any]:
        assert (await self.recv())["type"] == "session.created"
        await self.send("session.update", session=session)
        return await self.recv()

    async def append(self, pcm: bytes, chunk: int = 3200) -> None:
        for i in range(0, len(pcm), chunk):
            await self.send("input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + chunk]).decode())


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    async with Simulator(pace_s=0.002) as simulator:
        yield simulator


async def open_client(sim: Simulator, query: str = "") -> Client:
    ws = await connect(f"{sim.url}?model={MODEL}{query}", open_timeout=5)
    return Client(ws)
