"""The soak's accountant: what became of each utterance fed, and why the lost ones were lost.

Pure: ``account`` turns what was observed during a run (the feeder's clock, capture's
messages on the bus, the simulator's per-connection records, the session's answers, playback's
runs, the kill schedule) into one ``Fate`` per utterance. Each utterance is followed stage by
stage (fed, captured, sent, answered, received, played); one that stops short is given the cause
the observations show at that stage, and "unexplained" when they show none. Nothing is assumed:
a kill counts only if its window (kill to the process's successor being up) overlaps the
utterance or its answer, a mute only if capture's own counters say it muted then.

All times are ``time.monotonic_ns()``, which the bench, the simulator (in the bench's process)
and the box's processes share.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import pairwise

S = 1_000_000_000
#: Capture stamps a period's end; where a period's content is not found among what was fed (an echo
#: canceller changed it), it belongs to the utterance whose window, moved by capture's lag behind the
#: feeder (measured from the periods that were found), holds it, give or take this much.
LAG_NS = 300_000_000
#: The answer to an utterance is due within this after it ends (1.2 s trailing silence sent, the
#: service's 0.6 s end of speech, the reply's events).
ANSWER_NS = 5 * S
#: The audio of an utterance leaves the session within this after it ends (trailing silence included).
SEND_NS = 2 * S
#: A restarted process needs a moment after its first heartbeat (a session reconnects, capture reopens).
UP_MARGIN_NS = S // 2
#: Shares of an utterance's loud periods that must reach the next stage for it to count as passed.
HEARD_SHARE = 0.5
SENT_SHARE = 0.5
MUTED_SHARE = 0.2
#: An answer counts as played when the speaker played this share of its audio.
PLAYED_SHARE = 0.9
#: Playback drains when the queue runs dry, also mid-answer when the rest comes late (a bursty
#: server): runs of one process this close together are one run, an answer played with a pause.
PAUSE_NS = S

STAGES = ("fed", "captured", "sent", "answered", "received", "played")


@dataclass(frozen=True)
class Fed:
    """One utterance as the feeder wrote it: its first and last period, and how many of its
    20 ms periods are loud (what capture should publish and the service should hear)."""

    index: int
    start_ns: int
    end_ns: int
    loud_periods: int


@dataclass(frozen=True)
class Heard:
    """A loud, un-muted ``audio.in`` period capture published (``t``: the period's end), and when
    the feeder wrote that audio, where its content was found among what was fed."""

    t_ns: int
    digest: bytes
    fed_ns: int | None = None


@dataclass(frozen=True)
class CaptureBeat:
    """Capture's heartbeat: its pid and its running count of periods read and muted."""

    t_ns: int
    pid: int
    chunks: float
    muted_chunks: float


@dataclass(frozen=True)
class Connection:
    """One connection as the simulator recorded it."""

    number: int
    opened_ns: int
    closed_ns: int
    close_code: int | None
    #: Each loud period received (its digest) and the simulator's utterance number it fell in.
    periods: dict[bytes, int]
    replies: int  # responses begun
    completed: int  # responses sent to their end (response.done)


@dataclass(frozen=True)
class Answer:
    """A response as the session passed it to playback (``audio.out``), the ``rank``-th on its connection."""

    response_id: str
    connection: int
    rank: int
    first_ns: int
    last_ns: int
    audio_bytes: int


@dataclass(frozen=True)
class Run:
    """Playback speaking without a pause: ``started`` to ``drained`` (``end_ns`` None: never drained)."""

    pid: int
    start_ns: int
    end_ns: int | None
    frames: int


@dataclass(frozen=True)
class Kill:
    """A ``kill -9`` from the schedule; ``up_ns``: when the process's successor was up (None: never)."""

    name: str
    pid: int
    t_ns: int
    up_ns: int | None


@dataclass
class Observations:
    fed: list[Fed]
    heard: list[Heard]
    speech_starts: list[int]
    capture_beats: list[CaptureBeat]
    connections: list[Connection]
    answers: list[Answer]
    runs: list[Run]
    kills: list[Kill]
    half_duplex: bool = True
    barge_in: bool = True
    tail_ns: int = 400_000_000


@dataclass(frozen=True)
class Fate:
    index: int
    reached: str  # the last stage it passed: one of STAGES
    cause: str = ""  # why it went no further ("" when played)
    detail: str = ""

    @property
    def played(self) -> bool:
        return self.reached == "played"


@dataclass
class _Links:
    """Indexes built once from the observations."""

    where: dict[bytes, tuple[int, int]] = field(default_factory=dict)  # digest -> (connection, utterance)
    connections: dict[int, Connection] = field(default_factory=dict)
    answers: dict[tuple[int, int], Answer] = field(default_factory=dict)
    claimed: dict[tuple[int, int], int] = field(default_factory=dict)  # (connection, utterance) -> fed index


def account(obs: Observations) -> list[Fate]:
    links = _Links()
    for conn in obs.connections:
        links.connections[conn.number] = conn
        for digest, utterance in conn.periods.items():
            links.where[digest] = (conn.number, utterance)
    for answer in obs.answers:
        links.answers[(answer.connection, answer.rank)] = answer
    missed = _missed_answers(obs)
    lags = _Lags(obs.heard)
    return [_fate(obs, links, fed, lags, missed) for fed in sorted(obs.fed, key=lambda f: f.start_ns)]


class _Lags:
    """How far capture ran behind the feeder, measured from the periods whose content was found
    among what was fed (a restarted capture can lag by seconds: what was written while it was
    down waits in the microphone's buffer)."""

    def __init__(self, heard: list[Heard]) -> None:
        matched = sorted((h.fed_ns, h.t_ns - h.fed_ns) for h in heard if h.fed_ns is not None)
        self._fed = [m[0] for m in matched]
        self._lag = [m[1] for m in matched]
        self._matched = sorted((h for h in heard if h.fed_ns is not None), key=lambda h: h.fed_ns or 0)
        self._unmatched = sorted((h for h in heard if h.fed_ns is None), key=lambda h: h.t_ns)
        self._unmatched_t = [h.t_ns for h in self._unmatched]

    def at(self, fed_ns: int) -> int:
        """The lag measured last before ``fed_ns`` (0 before any)."""
        i = bisect_right(self._fed, fed_ns)
        return self._lag[i - 1] if i else (self._lag[0] if self._lag else 0)

    def heard(self, fed: Fed) -> list[Heard]:
        """What capture published of an utterance: its periods found by content, and those not
        found whose stamps fall in its window moved by the lag."""
        a = bisect_left(self._fed, fed.start_ns)
        b = bisect_right(self._fed, fed.end_ns + 20_000_000)
        lag = self.at(fed.end_ns)
        c = bisect_left(self._unmatched_t, fed.start_ns + lag)
        d = bisect_right(self._unmatched_t, fed.end_ns + lag + LAG_NS)
        return self._matched[a:b] + self._unmatched[c:d]


def _fate(obs: Observations, links: _Links, fed: Fed, lags: _Lags, missed: dict[str, str]) -> Fate:
    fs, fe = fed.start_ns, fed.end_ns
    life = (fs, fe + ANSWER_NS)
    heard = lags.heard(fed)
    if len(heard) < HEARD_SHARE * max(1, fed.loud_periods):
        return Fate(fed.index, "fed", *_not_captured(obs, fed, len(heard), lags.at(fs)))
    hits = Counter(links.where[h.digest] for h in heard if h.digest in links.where)
    if sum(hits.values()) < SENT_SHARE * len(heard):
        cause, detail = _lost_between(obs, (fs, fe + SEND_NS), life, ("session",))
        return Fate(fed.index, "captured", cause, detail or f"{sum(hits.values())} of {len(heard)} loud periods")
    (number, utterance), _ = hits.most_common(1)[0]
    first = links.claimed.setdefault((number, utterance), fed.index)
    conn = links.connections[number]
    if first != fed.index:
        return Fate(fed.index, "sent", "never answered", f"heard as one with utterance {first}")
    if conn.completed < utterance:
        cause, detail = _lost_between(obs, life, life, ("session",), conn)
        if cause == "unexplained":  # the service had it, on a connection that stayed open
            cause, detail = "never answered", f"connection {number} open, no response to its utterance {utterance}"
        return Fate(fed.index, "sent", cause, detail)
    answer = links.answers.get((number, utterance))
    if answer is None or answer.audio_bytes == 0:
        cause, detail = _lost_between(obs, life, life, ("session",), conn)
        return Fate(
            fed.index, "answered", cause, detail or f"response {utterance} on connection {number} not passed on"
        )
    why = missed.get(answer.response_id)
    if why is None:
        return Fate(fed.index, "played")
    window = (answer.first_ns, answer.last_ns + 2 * S)
    if why == "barge-in":
        return Fate(fed.index, "received", "barge-in", f"{answer.response_id} stopped by speech")
    cause, detail = _lost_between(obs, window, life, ("playback",))
    return Fate(fed.index, "received", cause, detail or f"{answer.response_id}: {why}")


def _not_captured(obs: Observations, fed: Fed, heard: int, lag: int) -> tuple[str, str]:
    """Capture's side, on its clock: the utterance's window moved by capture's lag."""
    fs, fe = fed.start_ns + lag, fed.end_ns + lag
    if kill := _killed(obs.kills, ("capture",), (fs, fe)):
        return _kill_cause(kill, fs)
    muted = _muted_share(obs.capture_beats, fs, fe + LAG_NS)
    if obs.half_duplex and muted >= MUTED_SHARE:
        # The box's voice anywhere in the utterance counts: an answer to the one before often
        # begins a second into the next, and mutes the rest of it.
        speaking = any(
            r.start_ns <= fe + LAG_NS and (r.end_ns is None or r.end_ns + obs.tail_ns >= fs) for r in obs.runs
        )
        detail = "the box spoke during it" if speaking else "the box was silent: a mute outlived its playback"
        return (
            "half-duplex mute",
            f"{detail} ({muted:.0%} of it muted; {heard} of {fed.loud_periods} loud periods published)",
        )
    if not any(fs - S // 5 <= t <= fe + LAG_NS for t in obs.speech_starts):
        return "VAD", f"{heard} of {fed.loud_periods} loud periods published, no speech start"
    if kill := _killed(obs.kills, None, (fs, fe)):
        return _kill_cause(kill, fs)
    return "unexplained", f"{heard} of {fed.loud_periods} loud periods published, speech detected"


def _lost_between(
    obs: Observations,
    window: tuple[int, int],
    life: tuple[int, int],
    processes: Iterable[str],
    conn: Connection | None = None,
) -> tuple[str, str]:
    """The cause a stage's failure shows: a kill of a process that stage needs, a dropped
    connection, or (failing both) any kill during the utterance's life; else unexplained."""
    if kill := _killed(obs.kills, processes, window):
        return _kill_cause(kill, life[0])
    closes = [conn] if conn is not None else obs.connections
    for c in closes:
        if window[0] - S <= c.closed_ns <= window[1] and c.closed_ns:
            when = (c.closed_ns - life[0]) / S
            return "connection drop", f"connection {c.number} closed (code {c.close_code}) {when:+.1f} s from its start"
    if kill := _killed(obs.kills, None, life):
        return _kill_cause(kill, life[0])
    return "unexplained", ""


def _kill_cause(kill: Kill, start: int) -> tuple[str, str]:
    return (
        f"kill window ({kill.name})",
        f"{kill.name} {kill.pid} killed {(kill.t_ns - start) / S:+.1f} s from its start",
    )


def _killed(kills: list[Kill], names: Iterable[str] | None, window: tuple[int, int]) -> Kill | None:
    wanted = None if names is None else set(names)
    for kill in kills:
        if wanted is not None and kill.name not in wanted:
            continue
        up = float("inf") if kill.up_ns is None else kill.up_ns + UP_MARGIN_NS
        if kill.t_ns <= window[1] and up >= window[0]:
            return kill
    return None


def _muted_share(beats: list[CaptureBeat], start: int, end: int) -> float:
    """The share of [start, end] capture muted, from its heartbeats' running counts."""
    muted = 0.0
    ordered = sorted(beats, key=lambda b: b.t_ns)
    for a, b in pairwise(ordered):
        if a.pid != b.pid or b.t_ns <= start or a.t_ns >= end or b.chunks <= a.chunks:
            continue
        overlap = min(b.t_ns, end) - max(a.t_ns, start)
        muted += overlap * min(1.0, (b.muted_chunks - a.muted_chunks) / (b.chunks - a.chunks))
    return muted / max(1, end - start)


def _missed_answers(obs: Observations) -> dict[str, str]:
    """Every answer that did not play, with why: each answer belongs to the playback run it
    arrived in (or the one that began right after), and a run plays its answers in order."""
    missed: dict[str, str] = {}
    runs = _joined(sorted(obs.runs, key=lambda r: r.start_ns))
    # A run that never drained took nothing after its process was killed (or, failing a kill on
    # record, after the next run began): answers that came later belong to its successor's runs.
    killed_at = {k.pid: k.t_ns for k in obs.kills if k.name == "playback"}
    nexts: list[int | None] = [r.start_ns for r in runs[1:]]
    ends = [
        r.end_ns if r.end_ns is not None else killed_at.get(r.pid, nxt)
        for r, nxt in zip(runs, [*nexts, None], strict=True)
    ]
    queued: dict[int, list[Answer]] = {}
    for answer in sorted(obs.answers, key=lambda a: a.first_ns):
        if answer.audio_bytes == 0:
            continue
        found = next(
            (
                i
                for i, r in enumerate(runs)
                if ((end := ends[i]) is None or end >= answer.first_ns) and r.start_ns <= answer.last_ns + S
            ),
            None,
        )
        if found is None:
            missed[answer.response_id] = "no playback run played it"
        else:
            queued.setdefault(found, []).append(answer)
    for i, answers in queued.items():
        run = runs[i]
        left = run.frames
        barged = obs.barge_in and any(run.start_ns < t <= (run.end_ns or t) for t in obs.speech_starts)
        for answer in answers:
            frames = answer.audio_bytes // 2
            if left >= PLAYED_SHARE * frames:
                left -= frames
                continue
            if run.end_ns is None:
                missed[answer.response_id] = "its playback run never drained"
            elif barged:
                missed[answer.response_id] = "barge-in"
            else:
                total = sum(a.audio_bytes // 2 for a in answers)
                missed[answer.response_id] = f"its run played {run.frames} of {total} frames"
            left = 0
    return missed


def _joined(runs: list[Run]) -> list[Run]:
    """Runs with a pause shorter than PAUSE_NS between them (same playback process) as one."""
    out: list[Run] = []
    for run in runs:
        last = out[-1] if out else None
        paused = last is not None and last.end_ns is not None and run.start_ns - last.end_ns < PAUSE_NS
        if last is not None and paused and last.pid == run.pid:
            out[-1] = Run(last.pid, last.start_ns, run.end_ns, last.frames + run.frames)
        else:
            out.append(run)
    return out


# --- the report ------------------------------------------------------------------------------


def funnel(fates: list[Fate]) -> list[tuple[str, int]]:
    """How many utterances reached each stage."""
    order = {stage: i for i, stage in enumerate(STAGES)}
    return [(stage, sum(order[f.reached] >= i for f in fates)) for i, stage in enumerate(STAGES)]


def causes(fates: list[Fate]) -> list[tuple[str, int]]:
    counts = Counter(f.cause for f in fates if not f.played)
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def report(fates: list[Fate]) -> str:
    lines = ["utterances by fate", f"{'stage reached':<28} {'utterances':>10}"]
    lines += [f"{stage:<28} {count:>10}" for stage, count in funnel(fates)]
    lost = [f for f in fates if not f.played]
    lines += ["", f"lost: {len(lost)} of {len(fates)}", f"{'cause':<28} {'utterances':>10}"]
    lines += [f"{cause:<28} {count:>10}" for cause, count in causes(fates)]
    if lost:
        lines += ["", "each lost utterance (index, last stage passed, cause, what was observed)"]
        lines += [f"  #{f.index:<4} {f.reached:<9} {f.cause:<24} {f.detail}" for f in lost]
    return "\n".join(lines)
