"""The baseline: a single-process client that does what the service's own sample client does.

One asyncio loop reads the microphone in 100 ms blocks (1600 frames, a blocking read in an
executor) and sends each as an ``input_audio_buffer.append``; a playback thread writes every
decoded ``response.audio.delta`` to the speaker in arrival order, with no jitter buffer.
It sends ``session.update`` right after connecting, as the sample does, and stops after
``--seconds``. For measurement only, it writes its own timestamps (CLOCK_MONOTONIC) to
``--stamps``: each block's read time with a hash of its bytes, and each response's first write
to ALSA.

    python -m bench.baseline_client --url ws://127.0.0.1:PORT/api-ws/v1/realtime \
        --capture DEV --playback DEV --seconds 60 --stamps FILE
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import queue
import sys
import threading
import time
from typing import IO, Any

import alsaaudio
import websockets

INPUT_CHUNK = 1600  # frames, 100 ms at 16 kHz: what the sample reads per append


def digest(pcm: bytes) -> str:
    return hashlib.blake2b(pcm, digest_size=8).hexdigest()


class Stamps:
    def __init__(self, out: IO[str]) -> None:
        self.out = out
        self.lock = threading.Lock()

    def write(self, **fields: Any) -> None:
        with self.lock:
            self.out.write(json.dumps(fields) + "\n")
            self.out.flush()


def player(device: str, chunks: queue.Queue[tuple[str, bytes] | None], stamps: Stamps) -> None:
    pcm = alsaaudio.PCM(alsaaudio.PCM_PLAYBACK, device=device, channels=1, rate=24000,
                        format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=2400)  # fmt: skip
    seen: set[str] = set()
    while (item := chunks.get()) is not None:
        response_id, data = item
        pcm.write(data)
        if response_id not in seen:
            seen.add(response_id)
            stamps.write(kind="played", response_id=response_id, t=time.monotonic_ns())
    pcm.close()


async def run(args: argparse.Namespace, stamps: Stamps) -> None:
    mic = alsaaudio.PCM(alsaaudio.PCM_CAPTURE, device=args.capture, channels=1, rate=16000,
                        format=alsaaudio.PCM_FORMAT_S16_LE, periodsize=INPUT_CHUNK)  # fmt: skip
    chunks: queue.Queue[tuple[str, bytes] | None] = queue.Queue()
    thread = threading.Thread(target=player, args=(args.playback, chunks, stamps), daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()
    async with websockets.connect(f"{args.url}?model=qwen3-livetranslate-flash-realtime",
                                  additional_headers={"Authorization": "Bearer baseline"}) as ws:  # fmt: skip
        await ws.send(json.dumps({
            "event_id": f"event_{time.time_ns()}", "type": "session.update",
            "session": {"modalities": ["text", "audio"], "voice": "Cherry", "input_audio_format": "pcm16",
                        "output_audio_format": "pcm24", "translation": {"language": "de"},
                        "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "en"}},
        }))  # fmt: skip

        async def receive() -> None:
            async for raw in ws:
                event = json.loads(raw)
                if event.get("type") == "response.audio.delta":
                    chunks.put((event.get("response_id", ""), base64.b64decode(event["delta"])))

        receiver = asyncio.create_task(receive())
        deadline = time.monotonic() + args.seconds
        n = 0
        while time.monotonic() < deadline:
            length, data = await loop.run_in_executor(None, mic.read)
            t = time.monotonic_ns()
            if length <= 0 or not data:
                continue
            stamps.write(kind="read", hash=digest(data[-640:]), t=t)
            n += 1
            await ws.send(json.dumps({"event_id": f"event_{time.time_ns()}_{n}", "type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(data).decode()}))  # fmt: skip
        receiver.cancel()
    chunks.put(None)
    thread.join(5)
    mic.close()


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--capture", required=True)
    parser.add_argument("--playback", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--stamps", required=True)
    args = parser.parse_args()
    with open(args.stamps, "w", encoding="utf-8") as out:
        asyncio.run(run(args, Stamps(out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
