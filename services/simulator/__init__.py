"""A local stand-in for the realtime translation service, speaking protocol.md (``tolk simulator``).

It serves ``ws://HOST:PORT/api-ws/v1/realtime?model=qwen3-livetranslate-flash-realtime`` and
behaves as the documentation says the service does: ``session.created`` on connect,
``session.updated`` (the full effective config) or an ``error`` for each ``session.update``,
an energy-based end of speech (>= 250 ms of speech, then 600 ms of silence) that triggers a
response with the documented lifecycle, a short tone as the "translation" (24 kHz mono s16; with
``--voice FILE.wav``, a stretch of that recorded voice instead, as echo tests need), and
transcripts that say plainly they are simulated. ``session.finish`` is answered with
``session.finished``.

It holds the CLIENT to the documentation (see ``rules.py``): every violation is answered with an
``error`` event and kept in ``Simulator.violations``.

With ``?model=qwen3-omni-flash-realtime`` it speaks the Omni profile instead (protocol.md 9):
``instructions``/``turn_detection`` in the session, turn events from its VAD, transcripts as
``*.delta`` pieces, and ``session.finish`` refused as an invalid event type. Tests can push raw
frames onto the open connections with ``Simulator.inject`` (or ``inject_threadsafe``).

Faults are injected with ``Simulator(faults=Faults(...))`` in-process; for ``tolk simulator``
with the environment variable ``TOLK_SIMULATOR_FAULTS`` (or a ``faults`` attribute on the parsed
arguments); and per connection with a ``faults=`` query parameter on the URL. All three use
the spelling in ``faults.py``, e.g. ``refuse=401x2,delay=1.5,bursty``.

``--record FILE`` writes each client event as one JSON line to FILE (audio and image payloads
replaced by their decoded byte length) and the raw received audio to ``FILE.pcm``, flushed as
they arrive so that another process can follow them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from services.simulator.faults import Faults, FaultSpecError
from services.simulator.server import ConnectionLog, Simulator, running_in_thread
from services.simulator.speech import load_voice

__all__ = ["ConnectionLog", "Faults", "Simulator", "main", "running_in_thread"]

FAULTS_ENV = "TOLK_SIMULATOR_FAULTS"


def main(args: argparse.Namespace) -> int:
    """``tolk simulator``: serve until SIGINT/SIGTERM. Exit 2 on a bad fault spec, 1 if it cannot bind."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s tolk-simulator %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)  # one line per probe is noise
    spec = getattr(args, "faults", None) or os.environ.get(FAULTS_ENV, "")
    try:
        faults = Faults.parse(spec)
    except FaultSpecError as exc:
        print(f"tolk simulator: {exc}", file=sys.stderr)
        return 2
    voice = None
    if getattr(args, "voice", None):
        try:
            voice = load_voice(args.voice)
        except (OSError, ValueError) as exc:
            print(f"tolk simulator: --voice {args.voice}: {exc}", file=sys.stderr)
            return 2
    rate = getattr(args, "output_rate", 24000)
    return asyncio.run(_serve(args.host, args.port, args.record, faults, voice, rate))


async def _serve(
    host: str, port: int, record: str | None, faults: Faults, voice: bytes | None = None, output_rate: int = 24000
) -> int:
    sim = Simulator(host, port, faults=faults, record=record, voice=voice, output_rate=output_rate)
    try:
        await sim.start()
    except OSError as exc:
        print(f"tolk simulator: cannot listen on {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"simulator listening on {sim.url}", file=sys.stderr, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()
    print(
        f"simulator: {len(sim.connections)} connections, {sim.appends} appends, "
        f"{sim.responses} responses, {len(sim.violations)} client violations",
        file=sys.stderr,
    )
    return 0
