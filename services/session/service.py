"""The realtime session process: microphone audio to the service, translation back onto the bus.

The process owns its parts and meets them through small interfaces: ``lifetime.py`` connects,
watches and ends connections (backoff, fallback, rotation), ``sender.py`` sends what waits in
``outgoing.py``, ``events.py`` turns server events into bus messages. Here: the bus inputs
(audio, camera, commands, playback), the state everyone sees, config changes and shutdown.
READY never waits for the network: a box must start offline. docs/session.md has the design.
"""

from __future__ import annotations

import asyncio

from daemon import config as config_mod
from daemon import fleet, logs
from daemon.backend import session_url
from daemon.backoff import box_rng
from daemon.messages import (
    KEY_SECTION,
    AudioIn,
    AudioReplay,
    AudioResume,
    Command,
    FleetBudget,
    PlaybackState,
    SessionStatus,
    SpeechActivity,
    VideoFrame,
)
from daemon.service import STOP_TIMEOUT_S, Service, ServiceContext
from services.session import protocol
from services.session.direction import Direction
from services.session.events import EventHandler
from services.session.lifetime import ConnectionLifetime
from services.session.outgoing import Outgoing
from services.session.pacing import FleetPacing
from services.session.pause import Activity
from services.session.resume import RESUME_REPEAT_S, RESUME_WAIT_S, AudioIntake
from services.session.sender import Sender
from services.session.usage import UsageMeter
from services.session.visitor import VisitorChoice

RESTART_REQUESTED = "restart requested"
#: SessionStatus is re-sent this often so that a process that joins late learns the state.
STATUS_REPEAT_S = 2.0

COUNTERS = (
    "chunks_sent",
    "audio_seconds_sent",
    "deltas_received",
    "reconnects",
    "backlog_dropped",
    "malformed_events",
    "images_sent",
    "images_rejected",
    "responses",
    "responses_interrupted",
    "errors_received",
    "stalls",
    "rotations",
    "short_lived_connections",
    "chunks_resent",
    "chunks_requeued",
    "dead_connections",
    "wrong_direction_events",
    "deltas_after_barge_in",
)


class SessionService(Service):
    name = "session"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        cfg = self.config
        self.session_state = "connecting"
        self.detail = ""
        self.last_error = ""
        self.direction = Direction(cfg.languages)
        self.outgoing = Outgoing(cfg.service.chunk_ms, cfg.service.backlog_s)
        self.intake = AudioIntake(self.outgoing)
        activity, usage, ids = Activity(), UsageMeter(), protocol.EventIds()
        self.sender = Sender(self, self.outgoing, self.intake, self.direction, activity, usage, ids, self._switched)
        self.events = EventHandler(self, self.direction, activity, usage, self._service_error, self.sender.wake)
        # Jitter of this box's own (its box id), and its turn in the fleet's budget (pacing.py).
        self.pacing = FleetPacing(cfg)
        self.lifetime = ConnectionLifetime(self, self, self.events, self.sender, self.direction, activity, ids,
                                           pacing=self.pacing, rng=box_rng(fleet.box_id(cfg)))  # fmt: skip
        self.visitor = VisitorChoice(
            self.direction, self._visitor_changed, lambda: self.config.control.captions_clear_s, self.log
        )
        for counter in COUNTERS:
            self.counters[counter] = 0

    async def start(self) -> None:
        # Only the bus: READY must not wait for the network (a box starts offline too).
        self._audio = self.bus.subscribe(["capture"], AudioIn, AudioReplay)
        self._video = self.bus.subscribe(["camera"], VideoFrame)
        self._commands = self.bus.subscribe(["control"], Command)
        self._playback = self.bus.subscribe(["playback"], PlaybackState)
        self._speech = self.bus.subscribe(["capture"], SpeechActivity)
        self._fleet = self.bus.subscribe(["mqtt"], FleetBudget)

    async def run(self) -> None:
        self.spawn(self._read_audio(), "audio-in")
        self.spawn(self._resume(), "resume")
        self.spawn(self._read_video(), "video-in")
        self.spawn(self._read_commands(), "commands")
        self.spawn(self._follow_playback(), "barge-in")
        self.spawn(self._repeat_status(), "status")
        self.spawn(self.visitor.follow(self._speech), "visitor")
        self.spawn(self.pacing.follow(self._fleet), "fleet-budget")
        await self.lifetime.run()

    # --- state ---------------------------------------------------------------------------------

    def status(self) -> str:
        line = f"{self.session_state}: {self.detail}" if self.detail else self.session_state
        if self.lifetime.reconnects:
            line += f" (reconnects {self.lifetime.reconnects})"
        return line

    def set_state(self, state: str, detail: str = "", error_code: str | None = None) -> None:
        if (state, detail) == (self.session_state, self.detail):
            return
        self.session_state, self.detail = state, detail
        log = self.log.warning if state in ("failed", "backoff") else self.log.info
        log("session %s", self.status(), extra=logs.fields(error_code=error_code))
        self.publish_status()

    def publish_status(self) -> None:
        self.bus.publish(
            SessionStatus(
                state=self.session_state,
                detail=self.detail,
                last_error=self.last_error,
                reconnects=self.lifetime.reconnects,
                session_id=self.lifetime.session_id,
                backlog_dropped=self.outgoing.dropped,
                model=self.config.service.model,
                backend=self.lifetime.fallback.label(self.config),
                target=self.direction.effective(self.config).languages.target,
            )
        )

    def _service_error(self, error: protocol.ServiceError) -> None:
        self.last_error = str(error)
        self.publish_status()

    def _switched(self, effective: config_mod.Config) -> None:
        self.set_state("live", protocol.live_detail(effective))

    async def _repeat_status(self) -> None:
        while True:
            await asyncio.sleep(STATUS_REPEAT_S)
            self.publish_status()
            self.events.publish_usage()  # the rate per hour falls while the box is idle
            if not self.lifetime.live:
                # Waiting on a bounded timer or on a person is honest work: restarting the
                # process cannot fix a refused key, and would retry against the account.
                self.mark_fresh()
            elif self.lifetime.open:
                # Connected counts as working even in a long silence (speech-only streaming sends
                # nothing then): the socket's keepalive pings close it if the service is gone.
                self.mark_fresh()

    def _visitor_changed(self) -> None:
        self.events.follow_direction()  # captions and the update to the service follow
        self.sender.wake()
        self.publish_status()

    def _direction_command(self, direction: object) -> str:
        """A button (screen, GPIO) or POST /api/direction, through the bus; why it was refused, or ""."""
        try:
            what = self.direction.command(direction)
        except ValueError as exc:
            self.log.warning("direction command refused: %s", exc)
            return f"refused: {exc}"
        self.log.info("direction command: %s", what)
        self.events.follow_direction()
        self.sender.wake()  # the sender sends the update, if one is due
        return ""

    # --- bus inputs ------------------------------------------------------------------------------

    async def _read_audio(self) -> None:
        async for msg in self._audio:
            assert isinstance(msg, AudioIn | AudioReplay)
            if msg.rate != protocol.INPUT_RATE:
                self.count("audio_in_rejected")
                continue
            if isinstance(msg, AudioIn):
                self.intake.live(msg)
            elif self.intake.replay(msg):
                self._resumed()
            self.counters["backlog_dropped"] = self.outgoing.dropped

    async def _resume(self) -> None:
        """Ask capture for what no session settled (a crash left it unanswered), until it answers."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + RESUME_WAIT_S
        while self.intake.resuming and loop.time() < give_up:
            self.bus.publish(AudioResume())
            await asyncio.sleep(RESUME_REPEAT_S)
        if self.intake.resuming:
            self.log.info("no replay from capture within %.0f s: live audio only", RESUME_WAIT_S)
            self.intake.done()

    def _resumed(self) -> None:
        self.counters["chunks_replayed"] = self.intake.replayed
        if self.intake.replayed:
            self.log.info("capture replayed %d periods no session had settled", self.intake.replayed)

    async def _read_video(self) -> None:
        async for msg in self._video:
            assert isinstance(msg, VideoFrame)
            problem = protocol.image_problem(msg.jpeg)
            if problem is not None:
                self.count("images_rejected")
                self.log.debug("camera frame not sent: %s", problem)
                continue
            self.outgoing.add_image(msg)

    async def _read_commands(self) -> None:
        async for msg in self._commands:
            assert isinstance(msg, Command)
            if msg.name == "restart-session":
                self.log.info("restart-session requested")
                self.acknowledge(msg, "the session reconnects")
                await self.lifetime.restart(RESTART_REQUESTED, cloud_first=True)  # as at start
            elif msg.name == "direction":
                refused = self._direction_command(msg.args.get("direction"))
                self.acknowledge(msg, refused or "the session follows", ok=not refused)
            elif msg.name == "visitor-language":
                refused = self.visitor.choose(msg.args.get("language"), self.config)
                self.acknowledge(msg, refused or "the session translates into it from now on", ok=not refused)

    async def _follow_playback(self) -> None:
        """A barge-in stopped a response: the rest of its audio is not sent to the speaker."""
        async for msg in self._playback:
            assert isinstance(msg, PlaybackState)
            if msg.state == "interrupted" and msg.response_id:
                self.events.interrupted = msg.response_id
                self.log.info("barge-in: the rest of response %s is not played", msg.response_id)

    # --- config and shutdown ---------------------------------------------------------------------

    async def apply_config(self, new: config_mod.Config, changed: set[str]) -> None:
        old, self.config = self.config, new
        self.direction.configure(new.languages)
        self.visitor.configured(new)
        self.direction.take_switch()  # a new config goes out whole, below
        effective = self.direction.effective(new)
        self.events.follow_direction()
        self.outgoing.set_chunk_ms(new.service.chunk_ms, new.service.backlog_s)
        if _endpoint(old) != _endpoint(new) or KEY_SECTION in changed:
            why = "the API key changed" if KEY_SECTION in changed else "service url or model changed"
            await self.lifetime.restart(why, cloud_first=True)
        elif changed & {"languages", "output", "translation"} and self.lifetime.live:
            self.log.info("sending the new configuration to the live session")
            await self.lifetime.update(effective)
            self.set_state("live", protocol.live_detail(effective))
        elif self.session_state == "failed":
            self.lifetime.wake()  # the change may be what was missing (a key file, a voice)

    async def stop(self) -> None:
        await self.lifetime.finish(limit_s=STOP_TIMEOUT_S - 3.0)
        self.set_state("stopped")


def _endpoint(cfg: config_mod.Config) -> tuple[str, str, str]:
    return session_url(cfg), cfg.service.model, cfg.service.backend
