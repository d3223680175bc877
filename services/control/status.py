"""What control knows about the box: the latest state each process put on the bus.

Every process heartbeats every 2 s on its state socket. A process is ``down`` when its
last heartbeat is older than ``DOWN_AFTER_S`` or says it is stopping, stopped or failed. The engine
runs only while the session uses it (``ON_DEMAND``): it is expected while the session says its
backend is the engine, and ``idle`` otherwise.
Ages are measured from when control *received* a message (control's own monotonic clock),
so a publisher with a wrong clock cannot look alive.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from daemon import config as config_mod
from daemon.backend import FALLBACK
from daemon.bus import ON_DEMAND, OPTIONAL_PROCESSES, SERVICES, Subscriber
from daemon.config import Config
from daemon.messages import (
    Caption,
    CommandAck,
    EchoState,
    Heartbeat,
    Message,
    PlaybackState,
    SessionStatus,
    SpeechActivity,
    Usage,
)
from services.control.models import (
    CaptionInfo,
    CaptionText,
    ConfigSummary,
    EchoInfo,
    Health,
    PlaybackInfo,
    ProcessStatus,
    SessionInfo,
    StatusReport,
    UsageInfo,
)

#: Two missed heartbeats and a half (they come every 2 s) and a process counts as down.
DOWN_AFTER_S = 5.0
#: Lifecycle states that mean "not working", however fresh the heartbeat.
DOWN_STATES = frozenset({"stopping", "stopped", "failed"})
#: Session states that are healthy: working, or honestly waiting before the next attempt.
SESSION_OK_STATES = frozenset({"live", "backoff"})
#: Session states that are fine for a while (a connect, a rotation), then mean it is stuck.
SESSION_SETTLING_STATES = frozenset({"connecting", "configuring"})
SESSION_SETTLE_S = 30.0
#: How long the engine may take to start once the session turned to it (a Pi loads its models slowly).
ON_DEMAND_START_S = 30.0
#: How many utterances the status keeps (oldest dropped first).
CAPTIONS_KEPT = 6

#: The messages control listens to on every process's state socket.
STATE_TOPICS: tuple[type[Message], ...] = (
    Heartbeat,
    SessionStatus,
    Usage,
    Caption,
    SpeechActivity,
    PlaybackState,
    CommandAck,
    EchoState,
)


@dataclass
class _Process:
    name: str
    state: str = "unknown"
    status: str = ""
    pid: int | None = None
    counters: dict[str, float] = field(default_factory=dict)
    seen_at: float | None = None


@dataclass
class _Utterance:
    utterance: str
    source: CaptionText | None = None
    translation: CaptionText | None = None
    updated_at: float = 0.0


class StatusAggregator:
    """Folds the bus's state messages into the latest view of each process, the session and captions."""

    def __init__(
        self,
        processes: Iterable[str] = SERVICES,
        clock: Callable[[], float] = time.monotonic,
        down_after_s: float = DOWN_AFTER_S,
        captions_kept: int = CAPTIONS_KEPT,
        captions_clear_s: float = 0.0,
    ) -> None:
        self.clock = clock
        #: What people said is forgotten after this long without a word (0: kept until it scrolls out).
        self.captions_clear_s = captions_clear_s
        #: Counts the times the captions were forgotten: a screen that saw another count resets.
        self.captions_cleared = 0
        self._words_at = 0.0  # the last caption, or speech starting or ending
        self.down_after_s = down_after_s
        self.captions_kept = captions_kept
        self.received = 0
        # Only the expected processes are tracked: a stray publisher cannot grow this map.
        self._processes = {name: _Process(name) for name in processes}
        self._session: SessionStatus | None = None
        self._session_since = 0.0
        self._backend_since = 0.0  # when the session last changed backend (cloud, engine)
        self._usage: Usage | None = None
        self._speaking: bool | None = None
        self._playback: PlaybackState | None = None
        self._playback_at = 0.0
        self._echo: EchoState | None = None  # capture's canceller, as it last said
        self._utterances: OrderedDict[str, _Utterance] = OrderedDict()
        #: Called with each message after it is folded in, and control's clock reading (the
        #: captions stream and the latency metrics follow the bus this way).
        self.observers: list[Callable[[Message, float], None]] = []

    def expect(self, processes: Iterable[str]) -> None:
        """The processes the config now runs (``daemon.backend.processes``): what health asks of.

        An on-demand process is not asked of by the config but by the session (``_wanted``)."""
        names = [n for n in processes if n not in ON_DEMAND]
        seen = [n for n, p in self._processes.items() if n in OPTIONAL_PROCESSES and p.seen_at is not None]
        self._processes = {name: self._processes.get(name) or _Process(name) for name in [*names, *seen]}

    # --- input -----------------------------------------------------------------------------------

    async def consume(self, sub: Subscriber) -> None:
        """Fold messages from ``sub`` until cancelled."""
        async for msg in sub:
            self.handle(msg)

    def handle(self, msg: Message) -> None:
        self.received += 1
        now = self.clock()
        if isinstance(msg, Heartbeat):
            self._heartbeat(msg, now)
        elif isinstance(msg, SessionStatus):
            if self._session is None or self._session.state != msg.state:
                self._session_since = now
            if self._session is None or self._session.backend != msg.backend:
                self._backend_since = now
            self._session = msg
        elif isinstance(msg, Usage):
            self._usage = msg
        elif isinstance(msg, Caption):
            self._caption(msg, now)
        elif isinstance(msg, SpeechActivity):
            self._speaking = msg.speaking
            self._words_at = now  # speech started, or the quiet starts now
        elif isinstance(msg, PlaybackState):
            self._playback, self._playback_at = msg, now
        elif isinstance(msg, EchoState):
            self._echo = msg
        for observer in self.observers:
            observer(msg, now)

    def _heartbeat(self, msg: Heartbeat, now: float) -> None:
        proc = self._processes.get(msg.service)
        if proc is None and msg.service in OPTIONAL_PROCESSES:
            # The engine stands by only where the key is (control never holds it): it is
            # expected from its first heartbeat on, and reported down if it then goes silent.
            proc = self._processes[msg.service] = _Process(msg.service)
        if proc is None:
            return
        proc.state, proc.status, proc.pid = msg.state, msg.status, msg.pid
        proc.counters = dict(msg.counters)
        proc.seen_at = now

    def _caption(self, msg: Caption, now: float) -> None:
        utt = self._utterances.get(msg.utterance)
        if utt is None:
            utt = self._utterances[msg.utterance] = _Utterance(msg.utterance)
            while len(self._utterances) > self.captions_kept:
                self._utterances.popitem(last=False)
        # Partial text is the confirmed part plus the unconfirmed stash; a final replaces it all,
        # and a partial arriving after the final (reordering) must not undo it.
        kind = "source" if msg.kind == "source" else "translation"
        current: CaptionText | None = getattr(utt, kind)
        if current is not None and current.final and not msg.final:
            return
        text = msg.text if msg.final else msg.text + msg.stash
        setattr(utt, kind, CaptionText(text=text, final=msg.final, language=msg.language))
        utt.updated_at = self._words_at = now

    # --- views -----------------------------------------------------------------------------------

    def process_statuses(self) -> dict[str, ProcessStatus]:
        now = self.clock()
        out = {}
        for proc in self._processes.values():
            age = None if proc.seen_at is None else round(now - proc.seen_at, 2)
            idle = self._idle(proc, now)
            up = idle or self._process_problem(proc, now) is None
            out[proc.name] = ProcessStatus(
                name=proc.name,
                up=up,
                state="idle" if idle else proc.state if up else "down",
                reported_state=proc.state,
                status=proc.status,
                pid=proc.pid,
                age_s=age,
                counters=proc.counters,
            )
        return out

    def _wanted(self, name: str, now: float) -> bool:
        """Whether an on-demand process is needed now, and has had time to start."""
        session = self._session
        uses_engine = session is not None and session.backend in ("local", FALLBACK)
        return name not in ON_DEMAND or (uses_engine and now - self._backend_since > ON_DEMAND_START_S)

    def _idle(self, proc: _Process, now: float) -> bool:
        """An on-demand process that nobody needs now and that does not run: idle by design."""
        if proc.name not in ON_DEMAND or self._wanted(proc.name, now):
            return False
        return proc.seen_at is None or proc.state in DOWN_STATES or now - proc.seen_at > self.down_after_s

    def _process_problem(self, proc: _Process, now: float) -> str | None:
        if self._idle(proc, now):
            return None
        if proc.seen_at is None:
            return f"{proc.name}: no heartbeat received"
        age = now - proc.seen_at
        if age > self.down_after_s:
            return f"{proc.name}: no heartbeat for {age:.1f} s"
        if proc.state in DOWN_STATES:
            said = f" — {proc.status}" if proc.status and proc.status != proc.state else ""
            return f"{proc.name}: {proc.state}{said}"
        return None

    def _session_problem(self, now: float) -> str | None:
        session = self._session
        if session is None:
            return "session: no session state received"
        state = session.state
        if state in SESSION_OK_STATES:
            return None
        if state in SESSION_SETTLING_STATES:
            lasted = now - self._session_since
            return None if lasted <= SESSION_SETTLE_S else f"session: {state} for {lasted:.0f} s"
        why = session.last_error or session.detail
        return f"session: {state}" + (f" — {why}" if why else "")

    def health(self) -> Health:
        now = self.clock()
        reasons = [p for proc in self._processes.values() if (p := self._process_problem(proc, now))]
        # A process that runs but cannot do its work (a mic that is missing) is up, not healthy.
        reasons += [
            f"{proc.name}: {proc.status or 'degraded'}"
            for proc in self._processes.values()
            if proc.state == "degraded" and self._process_problem(proc, now) is None
        ]
        if problem := self._session_problem(now):
            reasons.append(problem)
        return Health(ok=not reasons, reasons=reasons)

    def session_info(self) -> SessionInfo:
        s = self._session
        if s is None:
            return SessionInfo(state="unknown", detail="no state reported yet", for_s=0.0)
        return SessionInfo(
            state=s.state,
            detail=s.detail,
            last_error=s.last_error,
            reconnects=s.reconnects,
            session_id=s.session_id,
            backlog_dropped=s.backlog_dropped,
            backend=s.backend,
            for_s=round(self.clock() - self._session_since, 2),
        )

    def usage_info(self) -> UsageInfo | None:
        u = self._usage
        if u is None:
            return None
        return UsageInfo(
            input_audio_tokens=u.input_audio_tokens,
            input_text_tokens=u.input_text_tokens,
            output_audio_tokens=u.output_audio_tokens,
            output_text_tokens=u.output_text_tokens,
            image_tokens_estimate=u.image_tokens_estimate,
            audio_seconds_sent=u.audio_seconds_sent,
            input_tokens=u.input_tokens,
            output_tokens=u.output_tokens,
            images_sent=u.images_sent,
            tokens_per_hour=u.tokens_per_hour,
            cost_per_hour=u.cost_per_hour,
        )

    def session_target(self) -> str:
        """The language the session says it translates into now ("" before it said)."""
        return self._session.target if self._session is not None else ""

    def captions(self) -> list[CaptionInfo]:
        now = self.clock()
        self.forget_if_quiet(now)
        return [self._caption_info(u, now) for u in self._utterances.values()]

    def forget_if_quiet(self, now: float | None = None) -> bool:
        """Drop every caption once the room has been quiet ``captions_clear_s``; whether it did."""
        now = self.clock() if now is None else now
        quiet = now - self._words_at >= self.captions_clear_s
        if not self._utterances or self.captions_clear_s <= 0 or self._speaking or not quiet:
            return False
        self._utterances.clear()
        self.captions_cleared += 1
        return True

    def caption(self, utterance: str) -> CaptionInfo | None:
        """One utterance as it stands now (None once it has scrolled out)."""
        utt = self._utterances.get(utterance)
        return None if utt is None else self._caption_info(utt, self.clock())

    @staticmethod
    def _caption_info(u: _Utterance, now: float) -> CaptionInfo:
        return CaptionInfo(
            utterance=u.utterance, source=u.source, translation=u.translation, age_s=round(now - u.updated_at, 2)
        )

    def process_up(self, name: str) -> bool:
        proc = self._processes.get(name)
        return proc is not None and self._process_problem(proc, self.clock()) is None

    def echo_info(self) -> EchoInfo | None:
        echo = self._echo
        if echo is None:
            return None
        return EchoInfo(
            cancelling=echo.cancelling,
            erle_db=echo.erle_db,
            far_s=echo.far_s,
            double_talk_s=echo.double_talk_s,
            double_talk_ratio=echo.double_talk_ratio,
            onset_guard_s=echo.onset_guard_s,
            residual_s=echo.residual_s,
            resyncs=echo.resyncs,
            reference_late_s=echo.reference_late_s,
        )

    def playback_info(self) -> PlaybackInfo | None:
        p = self._playback
        if p is None:
            return None
        return PlaybackInfo(
            state=p.state,
            response_id=p.response_id,
            underruns=p.underruns,
            age_s=round(self.clock() - self._playback_at, 2),
        )

    def report(self, cfg: Config) -> StatusReport:
        return StatusReport(
            health=self.health(),
            processes=self.process_statuses(),
            session=self.session_info(),
            usage=self.usage_info(),
            speaking=self._speaking,
            playback=self.playback_info(),
            echo=self.echo_info(),
            captions=self.captions(),
            config=summary(cfg),
        )


def summary(cfg: Config) -> ConfigSummary:
    key, origin = config_mod.api_key(cfg)
    return ConfigSummary(
        api_key="set" if key else "missing",
        api_key_from=origin if key else "",
        source=cfg.languages.source,
        target=cfg.languages.target,
        modalities=cfg.modalities,
        voice=cfg.voice,
        camera=cfg.camera.source,
        echo=cfg.audio.echo,
        listen=cfg.control.listen,
    )
