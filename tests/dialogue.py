"""A face-to-face dialogue through the session process: alternating zh and en utterances.

Used by tests/services/test_conversation.py and bench/conversation.py. Each utterance is real
espeak-ng speech with its language's simulator marker tone under it (services/simulator/
language.py), fed on a real capture bus at ``speedup`` times real time with a pause after it;
what the session publishes is read on its real sockets with the times it was made.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from daemon.bus import Bus
from daemon.messages import AudioIn, AudioOut, Caption, Usage
from services.simulator import Simulator
from services.simulator.language import with_marker
from tests.helpers import espeak_wav, wav_pcm
from tests.services.session_rig import PERIOD, SessionTap, feed_until

PHRASES = {
    "zh": ["你好", "谢谢", "请问车站在哪里", "多少钱", "我要一张票", "好的", "没问题", "再见"],
    "en": ["hello", "thank you", "where is the station", "how much is it", "one ticket please", "okay", "no problem"],
}


@dataclass
class Turn:
    language: str
    pcm: bytes
    spoken_end_ns: int = 0


@dataclass
class Dialogue:
    turns: list[Turn]
    translations: list[Caption] = field(default_factory=list)  # final ones, in order
    first_translation_ns: list[int] = field(default_factory=list)  # per translated utterance
    audio_responses: int = 0
    usage: Usage | None = None
    wall_s: float = 0.0


def alternating(count: int, repeats: tuple[int, ...] = ()) -> list[str]:
    """zh, en, zh, ...: ``count`` turns; at each index in ``repeats`` the same side speaks again."""
    sides = ["zh"]
    while len(sides) < count:
        same = len(sides) in repeats
        sides.append(sides[-1] if same else ("en" if sides[-1] == "zh" else "zh"))
    return sides


def make_turns(workdir: Path, languages: list[str]) -> list[Turn]:
    """One utterance per entry of ``languages``, each with its language's marker tone."""
    spoken: dict[tuple[str, str], bytes] = {}
    turns = []
    for n, language in enumerate(languages):
        phrases = PHRASES[language]
        text = phrases[n % len(phrases)]
        if (language, text) not in spoken:
            wav = espeak_wav(text, workdir / f"{language}-{len(spoken)}.wav", voice=language)
            pcm = wav_pcm(wav)
            spoken[language, text] = with_marker(pcm[: len(pcm) - len(pcm) % PERIOD], language)
        turns.append(Turn(language, spoken[language, text]))
    return turns


def run_dialogue(
    capture: Bus,
    sim: Simulator,
    tap: SessionTap,
    turns: list[Turn],
    pause_s: float,
    speedup: float,
    before_turn: Callable[[Turn], None] | None = None,
) -> Dialogue:
    """Speak every turn with a pause after it; wait for the last translation; collect the results.

    ``before_turn`` runs before each turn is spoken (a button pressed, for instance).
    """
    result = Dialogue(turns)
    feed_until(capture, sim, lambda: sim.appends > 0)
    reading = threading.Event()
    reader = threading.Thread(target=_read, args=(tap, reading), daemon=True)
    started = time.monotonic()
    reader.start()
    silence = bytes(PERIOD * round(pause_s / 0.02))
    for turn in turns:
        if before_turn is not None:
            before_turn(turn)
        publish_paced(capture, turn.pcm, speedup)
        turn.spoken_end_ns = time.monotonic_ns()
        publish_paced(capture, silence, speedup)
    deadline = time.monotonic() + 20
    while len(_finals(tap)) < len(turns) and time.monotonic() < deadline:
        publish_paced(capture, bytes(PERIOD * 10), speedup)
    publish_paced(capture, bytes(PERIOD * 50), speedup)  # a moment for anything that should not come
    reading.set()
    reader.join()
    result.wall_s = time.monotonic() - started
    result.translations = _finals(tap)
    firsts: dict[str, int] = {}
    for msg in list(tap.seen):
        if isinstance(msg, Caption) and msg.kind == "translation":
            firsts.setdefault(msg.utterance, msg.t)
    result.first_translation_ns = list(firsts.values())
    result.audio_responses = len({m.response_id for m in tap.of(AudioOut) if m.pcm})
    usages = tap.of(Usage)
    result.usage = usages[-1] if usages else None
    return result


def _finals(tap: SessionTap) -> list[Caption]:
    return [m for m in list(tap.seen) if isinstance(m, Caption) and m.kind == "translation" and m.final]


def _read(tap: SessionTap, stop: threading.Event) -> None:
    while not stop.is_set():
        tap.pump(0.05)


def publish_paced(capture: Bus, pcm: bytes, speedup: float) -> None:
    """``pcm`` onto the capture bus in 20 ms periods at ``speedup`` times real time."""
    start = time.monotonic()
    for n, i in enumerate(range(0, len(pcm), PERIOD)):
        capture.bulk.publish(AudioIn(pcm=pcm[i : i + PERIOD]))
        # Paced against the clock, not per sleep: sleeps overshoot and would stretch the dialogue.
        wait = start + (n + 1) * 0.02 / speedup - time.monotonic()
        if wait > 0:
            time.sleep(wait)
