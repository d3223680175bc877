"""Nothing said is lost when the link fails: a connection dropped mid-utterance, and a network
that goes silent without closing anything.

``tolk service session`` as a real process against the simulator over real WebSockets; audio on a
real capture bus (a stand-in that keeps no ring: the session waits ``RESUME_WAIT_S`` for a replay
that never comes, then goes on). The silent network is a real TCP proxy on loopback that stops
forwarding the connections it carries, as a Wi-Fi that roams away leaves them.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from daemon.bus import Bus
from daemon.messages import Caption, SessionStatus
from services.session.pause import is_loud
from services.simulator import Faults, running_in_thread
from tests.helpers import espeak_wav, wait_until, wav_pcm
from tests.services.session_rig import PERIOD, feed_until, publish, session_process, write_config

SENTENCE = "The exhibition opens at nine tomorrow morning and closes at six in the evening."


@pytest.fixture
def capture(rundir: Path) -> Iterator[Bus]:
    bus = Bus("capture", rundir)
    yield bus
    bus.close()


def _speech(rundir: Path) -> bytes:
    pcm = wav_pcm(espeak_wav(SENTENCE, rundir / "sentence.wav"))
    return pcm[: len(pcm) - len(pcm) % PERIOD]


def _from_first_word(speech: bytes) -> bytes:
    """The sentence from its first loud period (espeak-ng leads in with near-silence)."""
    first = next(i for i in range(0, len(speech), PERIOD) if is_loud(speech[i : i + PERIOD]))
    return speech[first:]


def _finals(tap: object) -> list[Caption]:
    return [m for m in tap.of(Caption) if m.kind == "translation" and m.final]  # type: ignore[attr-defined]


def test_an_utterance_cut_by_a_dropped_connection_goes_whole_on_the_next(rundir: Path, capture: Bus) -> None:
    """The first connection is closed 3 s into the audio, mid-sentence: the next one hears the
    sentence from its first sample (the service lost its half with the connection), once."""
    speech = _speech(rundir)
    assert len(speech) / 32000 > 3.5
    with running_in_thread(faults=Faults.parse("close_after_audio=3x1")) as sim:
        config = write_config(rundir / "tolk.toml", sim.url)
        with session_process(rundir, config) as (_proc, tap):
            feed_until(capture, sim, lambda: sim.appends > 0)
            publish(capture, speech + bytes(PERIOD * 100), speedup=1)
            said = _from_first_word(speech)
            wait_until(lambda: len(sim.connections) >= 2 and said in bytes(sim.connections[1].audio), 20, 0.1,
                       "the whole sentence on the second connection")  # fmt: skip
            tap.wait_for(lambda m: isinstance(m, Caption) and m.final and m.kind == "translation", 20, "a translation")
            tap.pump(1.5)
    first = bytes(sim.connections[0].audio)
    assert speech[:PERIOD * 10] in first and speech not in first, "the drop did not come mid-sentence"
    assert len(_finals(tap)) == 1, [c.text for c in _finals(tap)]
    assert sim.violations == []


class BlackholeProxy:
    """A TCP proxy on loopback; ``blackhole()`` makes the connections it carries go silent both
    ways (nothing forwarded, nothing closed); connections made later are carried normally."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._dead: set[int] = set()
        self._count = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True, name="proxy")

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._carry, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _carry(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._count += 1
        number = self._count
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            while data := await src.read(65536):
                if number in self._dead:
                    continue  # swallowed: the far side hears nothing, and nothing closes
                dst.write(data)
                await dst.drain()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer), return_exceptions=True)
        for w in (writer, up_writer):
            w.close()

    def blackhole(self) -> None:
        self._dead.update(range(1, self._count + 1))

    @property
    def connections(self) -> int:
        return self._count

    def __enter__(self) -> BlackholeProxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc: object) -> None:
        async def _end() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._loop.stop()

        asyncio.run_coroutine_threadsafe(_end(), self._loop)
        self._thread.join(5)


@contextmanager
def _feeding(capture: Bus, pcm: bytes) -> Iterator[threading.Thread]:
    feeder = threading.Thread(target=publish, args=(capture, pcm), kwargs={"speedup": 1}, daemon=True)
    feeder.start()
    yield feeder
    feeder.join(60)


def test_a_silent_network_is_noticed_within_seconds_while_speech_waits(rundir: Path, capture: Bus) -> None:
    """The link goes silent mid-sentence (no FIN, no RST): the session gives the connection up
    within ~5 s (a ping with no pong), reconnects, and the sentence is translated whole."""
    speech = _speech(rundir)
    with running_in_thread() as sim, BlackholeProxy(sim.port) as proxy:
        url = f"ws://127.0.0.1:{proxy.port}/api-ws/v1/realtime"
        config = write_config(rundir / "tolk.toml", url)
        with session_process(rundir, config) as (_proc, tap):
            feed_until(capture, sim, lambda: sim.appends > 0)
            before = len(sim.audio_in)
            with _feeding(capture, speech + bytes(PERIOD * 150)):
                wait_until(lambda: len(sim.audio_in) - before > 32000, 10, 0.02, "a second of the sentence sent")
                went_silent = time.monotonic()
                proxy.blackhole()
                wait_until(lambda: proxy.connections >= 2, 15, 0.05, "a new connection")
                noticed_s = time.monotonic() - went_silent
                tap.wait_for(
                    lambda m: isinstance(m, SessionStatus) and m.state == "live" and m.reconnects >= 1, 10, "live"
                )
                tap.wait_for(
                    lambda m: isinstance(m, Caption) and m.final and m.kind == "translation", 30, "a translation"
                )
    print(f"silent network noticed after {noticed_s:.1f} s")
    # The ping goes at most 1 s after the speech began waiting, its pong is given 2.5 s: under
    # 4 s, with slack for a loaded machine (TCP alone, and the stall timeout, took 20-40 s).
    assert noticed_s < 8.0, f"took {noticed_s:.1f} s to notice the dead connection"
    said = _from_first_word(speech)
    assert said in bytes(sim.connections[-1].audio), "the sentence in flight did not go whole on the new connection"
