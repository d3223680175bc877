"""The engine runs only while it is used: started on its first connection, gone when idle.

``tolk run``'s supervisor holds the engine's socket as ``tolk-engine.socket`` does under systemd: no
engine process (and no memory) until the session connects; then the process starts, loads its
models and translates; ``[engine] unload_after_s`` after the last connection it exits (0), and the
next connection starts a new one.
"""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
import websockets

from daemon.app.supervisor import Supervisor
from tests.helpers import espeak_wav, free_port, service_env, short_tmpdir, wav_pcm

pytestmark = pytest.mark.skipif(
    __import__("importlib").util.find_spec("faster_whisper") is None, reason="the engine extra is not installed"
)

#: The models (Whisper, the translator, the voices) are ~270 MB.
LOADED_MB = 150


def _pss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no Pss line")


async def _translate(url: str, pcm: bytes) -> str:
    async with websockets.connect(url, open_timeout=60) as ws:
        await ws.send(json.dumps({"event_id": "e1", "type": "session.update", "session": {
            "modalities": ["text"], "input_audio_format": "pcm16", "translation": {"language": "pt"},
            "input_audio_transcription": {"model": "qwen3-asr-flash-realtime", "language": "en"}}}))  # fmt: skip
        audio = pcm + bytes(32000)
        for n, i in enumerate(range(0, len(audio), 3200)):
            chunk = base64.b64encode(audio[i : i + 3200]).decode()
            await ws.send(json.dumps({"event_id": f"a{n}", "type": "input_audio_buffer.append", "audio": chunk}))
        async with asyncio.timeout(60):
            async for raw in ws:
                event = json.loads(raw)
                assert event["type"] != "error", event
                if event["type"] == "response.text.done":
                    return str(event["text"])
    raise AssertionError("no translation")


def test_the_engine_starts_on_a_connection_and_exits_when_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    work = short_tmpdir("tke")
    (work / "state").mkdir()
    port = free_port()
    config = work / "tolk.toml"
    config.write_text(
        f'[service]\nbackend = "local"\n[languages]\nsource = "en"\ntarget = "pt"\n'
        f'[engine]\nlisten = "127.0.0.1:{port}"\nunload_after_s = 2\n'
    )
    env = service_env(work)
    for name in ("TOLK_RUNTIME_DIR", "TOLK_STATE_DIR"):
        monkeypatch.setenv(name, env[name])
    pcm = wav_pcm(espeak_wav("Where is the train station?", work / "en.wav", voice="en-us"))
    url = f"ws://127.0.0.1:{port}/api-ws/v1/realtime?model=qwen3-livetranslate-flash-realtime"

    async def scenario() -> tuple[float, list[int]]:
        box = Supervisor(str(config), restart=False, env=env, services=("engine",))
        await box.start()
        engine = box.children["engine"]
        try:
            await asyncio.sleep(1.0)
            assert engine.proc is None, "the engine started before anyone connected"

            assert "estação" in (await _translate(url, pcm)).lower()  # the connection starts it
            assert engine.proc is not None and engine.proc.returncode is None
            first = engine.proc
            serving = _pss_mb(first.pid)
            assert serving > LOADED_MB, f"{serving:.0f} MB while serving: were the models loaded at all?"

            # Idle for unload_after_s: the process exits, its work done (0), the socket stays.
            assert await asyncio.wait_for(first.wait(), 30) == 0
            assert box.failed is None

            # The next connection starts a new process, which serves as the first did.
            assert "estação" in (await _translate(url, pcm)).lower()
            assert engine.proc is not first and engine.proc.returncode is None
            return serving, [first.pid, engine.proc.pid]
        finally:
            await box.stop()

    serving, pids = asyncio.run(scenario())
    assert pids[0] != pids[1]
    print(f"engine PSS serving {serving:.0f} MB; none between its runs (pids {pids})")
