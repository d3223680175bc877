"""Conversation mode: how well and at what cost the box chooses the direction of each turn.

    .venv/bin/python -m bench.conversation [--turns 20] [--speedup 1]

A face-to-face dialogue (espeak-ng zh and en with the simulator's language marker, 1.5 s
pauses, mostly turn about with three "second sentences") goes through the real session process
against the simulator, once per method:

- fixed:   the direction pressed on a button before every turn (the ``direction`` command on
           the bus; the baseline: what one-way translation costs);
- expect:  automatic, switching ahead after each translation (``expect_turns = true``);
- follow:  automatic, staying with the last language heard (``expect_turns = false``).

Printed per method: direction accuracy, latency from end of speech to the first translation
caption (p50 over all turns and over the turns that needed a re-send), and tokens per turn.
Two parallel sessions (A→B and B→A, the wrong one suppressed) are not built; their cost follows
from the fixed baseline: every turn's audio and output twice, no added latency. Language
identification on the box costs no tokens but holds each utterance until it has heard enough
to decide (typically 1-2 s of speech) and needs a model on the box; not built either.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from daemon.bus import Bus  # noqa: E402
from daemon.messages import Command  # noqa: E402
from services.simulator import running_in_thread  # noqa: E402
from tests.dialogue import Dialogue, Turn, alternating, make_turns, run_dialogue  # noqa: E402
from tests.helpers import rmtree, short_tmpdir  # noqa: E402
from tests.services.session_rig import KEY, session_process, write_config  # noqa: E402

OTHER = {"zh": "en", "en": "zh"}
METHODS = {
    "fixed": "",  # the direction is pressed for each turn (the direction command)
    "expect": "expect_turns = true",
    "follow": "expect_turns = false",
}


def run(method: str, languages: list[str], workdir: Path, speedup: float) -> tuple[Dialogue, int]:
    rundir = short_tmpdir("tkc")
    capture = Bus("capture", rundir)
    control = Bus("control", rundir)

    def press(turn: Turn) -> None:
        # The button for the side about to speak, as the captions page or a GPIO button sends it.
        control.publish(Command(name="direction", args={"direction": "a-to-b" if turn.language == "zh" else "b-to-a"}))

    try:
        with running_in_thread(api_key=KEY) as sim:
            config = write_config(rundir / "tolk.toml", sim.url)
            lines = f'target = "en"\nmode = "conversation"\n{METHODS[method]}'
            config.write_text(config.read_text().replace('target = "en"', lines))
            turns = make_turns(workdir, languages)
            hook = press if method == "fixed" else None
            with session_process(rundir, config, DASHSCOPE_API_KEY=KEY) as (_proc, tap):
                dialogue = run_dialogue(capture, sim, tap, turns, pause_s=1.5, speedup=speedup, before_turn=hook)
            return dialogue, sim.responses - len(turns)
    finally:
        capture.close()
        control.close()
        rmtree(rundir)


def report(method: str, dialogue: Dialogue, suppressed: int, languages: list[str]) -> None:
    turns = dialogue.turns
    n = len(turns)
    spoken = [t.language for t in turns]
    right = sum(
        c.text.endswith(f"{lang} → {OTHER[lang]}") for lang, c in zip(spoken, dialogue.translations, strict=False)
    )
    latencies = [
        (first - turn.spoken_end_ns) / 1e6 for turn, first in zip(turns, dialogue.first_translation_ns, strict=False)
    ]
    if method == "expect":
        resent = [i for i in range(1, n) if spoken[i] == spoken[i - 1]]
    elif method == "follow":
        resent = [i for i in range(1, n) if spoken[i] != spoken[i - 1]]
    else:
        resent = []
    usage = dialogue.usage
    tokens_in = usage.input_tokens / n if usage else 0.0
    tokens_out = usage.output_tokens / n if usage else 0.0
    resent_ms = [latencies[i] for i in resent if i < len(latencies)]
    print(
        f"{method:7s} turns {n:3d}  translations {len(dialogue.translations):3d}  "
        f"direction right {100 * right / n:5.1f} %  re-sent turns {len(resent):2d} "
        f"(suppressed responses {suppressed})\n"
        f"        latency p50 {statistics.median(latencies):6.0f} ms  p90 {_p90(latencies):6.0f} ms"
        + (f"  re-sent p50 {statistics.median(resent_ms):6.0f} ms" if resent_ms else "")
        + f"\n        tokens per turn: input {tokens_in:6.1f}  output {tokens_out:6.1f}  "
        f"total {tokens_in + tokens_out:6.1f}  (wall {dialogue.wall_s:.0f} s)"
    )


def _p90(values: list[float]) -> float:
    return sorted(values)[max(0, round(0.9 * len(values)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--speedup", type=float, default=1.0, help="feed audio this many times real time")
    parser.add_argument("--methods", default="fixed,expect,follow")
    args = parser.parse_args()
    languages = alternating(args.turns, repeats=(5, 12, 17))
    print(f"dialogue: {' '.join(languages)}; pauses 1.5 s; audio at {args.speedup:g}x real time")
    baseline: Dialogue | None = None
    with tempfile.TemporaryDirectory() as workdir:
        for method in args.methods.split(","):
            dialogue, suppressed = run(method, languages, Path(workdir), args.speedup)
            report(method, dialogue, suppressed, languages)
            if method == "fixed":
                baseline = dialogue
    if baseline is not None and baseline.usage is not None:
        n = len(baseline.turns)
        print(
            "two parallel sessions (derived from fixed): tokens per turn input "
            f"{2 * baseline.usage.input_tokens / n:.1f}  output {2 * baseline.usage.output_tokens / n:.1f}; "
            "added latency ~0"
        )


if __name__ == "__main__":
    main()
