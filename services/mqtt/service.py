"""``tolk service mqtt``: the box on the fleet's MQTT broker (runs only when ``[mqtt] broker`` is set).

It listens to every process on the bus, as control does, and keeps the broker told: availability,
the ``state`` document (on change and every minute), Home Assistant's discovery, the captions when
allowed. Requests from the broker go to control (services/mqtt/remote.py); the fleet's budget to
the session (fleet.py). The broker's link is ``link.py``; topics ``topics.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
from typing import Any

from daemon import backend
from daemon import config as config_mod
from daemon.bus import OPTIONAL_PROCESSES, PROCESSES
from daemon.messages import KEY_SECTION, Caption, Heartbeat, RemoteAnswer, SessionStatus, Usage
from daemon.service import Service, ServiceContext
from services.mqtt import discovery
from services.mqtt.fleet import REPEAT_S, SETTLE_S, FleetRoster
from services.mqtt.link import PASSWORD_CREDENTIAL, BrokerLink, SecretGuard
from services.mqtt.remote import Requests
from services.mqtt.state import BoxView, significant
from services.mqtt.topics import Topics

#: The state goes out at least this often, changed or not (retained: a new dashboard sees it at once).
STATE_EVERY_S = 60.0
#: How often the box's view is looked at: a process that stops heartbeating sends nothing, so its
#: absence is noticed by the clock, and a change goes out within this.
TICK_S = 1.0


class MqttService(Service):
    name = "mqtt"

    def __init__(self, ctx: ServiceContext) -> None:
        super().__init__(ctx)
        self.guard = SecretGuard()
        self.topics = Topics.of(self.config)
        self.view = BoxView(self.topics.box, backend.processes(self.config))
        self.roster = FleetRoster(self.topics, self.log)
        self.link: BrokerLink | None = None
        self.requests: Requests | None = None
        self._link_tasks: list[asyncio.Task[Any]] = []
        self._sent: Any = None
        self._sent_at = -math.inf
        self._budget_at = -math.inf

    async def start(self) -> None:
        if self.config.mqtt.broker is None:
            raise RuntimeError("no [mqtt] broker is set: this process has nothing to do")
        self.guard.add(config_mod.api_key(self.config)[0])
        self.link = self._new_link(self.config)
        self._states = self.bus.subscribe(PROCESSES + OPTIONAL_PROCESSES, Heartbeat, SessionStatus, Usage, Caption)
        self._answers = self.bus.subscribe(["control"], RemoteAnswer)

    def _new_link(self, cfg: config_mod.Config) -> BrokerLink:
        """The broker's link for ``cfg``; raises on what cannot work (an unreadable CA file, a password
        without a user)."""
        password, _origin = config_mod.read_secret(cfg.mqtt.password_file, PASSWORD_CREDENTIAL)
        self.guard.add(password)
        link = BrokerLink(cfg.mqtt, self.topics.box, self.topics.availability, password, self.guard, self.log)
        if cfg.mqtt.broker is not None and cfg.mqtt.broker.startswith("mqtt://") and password:
            self.log.warning("the broker password goes in clear text to %s (allow_plain)", cfg.mqtt.broker)
        link.on_up = self._link_up
        return link

    async def run(self) -> None:
        self.spawn(self._follow_bus(), "bus-states")
        self.spawn(self._follow_answers(), "answers")
        self._open_link()
        while True:
            self.mark_fresh()  # waiting on the broker's backoff is honest work too
            self._publish_state()
            self._tell_session()
            self._count()
            await asyncio.sleep(TICK_S)

    async def stop(self) -> None:
        await self._close_link()

    def status(self) -> str:
        link = self.link
        if link is None:
            return "no broker configured" if self.state != "starting" else self.state
        if link.up.is_set():
            return f"connected to {link.url} as {self.topics.prefix}"
        if link.retry_in_s:
            return f"broker {link.url}: {link.why_down}; retrying (every {link.retry_in_s:.0f} s or so)"
        return f"connecting to {link.url}"

    # --- the link --------------------------------------------------------------------------------

    def _open_link(self) -> None:
        link = self.link
        if link is None:
            return
        self.requests = requests = Requests(self.topics, link, self.bus.publish, self.log)
        link.subscribe(self.topics.subscriptions())
        self._link_tasks = [
            self.spawn(link.run(), "link"),
            self.spawn(self._dispatch(link, requests), "incoming"),
            self.spawn(requests.serve(), "requests"),
        ]

    async def _close_link(self) -> None:
        for task in self._link_tasks:
            task.cancel()
        self._link_tasks = []
        if self.link is not None:
            await self.link.close()

    def _link_up(self) -> None:
        """Connected (again): the broker may have forgotten everything (a restart without persistence)."""
        link = self.link
        if link is None:
            return
        link.publish(self.topics.availability, "online", retain=True)
        if self.topics.fleet_member:
            link.publish(self.topics.fleet_member, self.roster.member_payload(), retain=True)
            asyncio.get_running_loop().call_later(SETTLE_S, self._settled)
        self._publish_discovery()
        self._publish_state(force=True)

    def _settled(self) -> None:
        self.roster.settled = True
        self._tell_session(now=True)

    async def _dispatch(self, link: BrokerLink, requests: Requests) -> None:
        while True:
            incoming = await link.incoming.get()
            if incoming.topic in (self.topics.config_set, self.topics.command):
                requests.take(incoming)
            elif incoming.topic == self.topics.ha_status:
                if incoming.payload.strip() == b"online":
                    self.log.info("Home Assistant is back online: announcing the box again")
                    self._publish_discovery()
            elif self.roster.hear(incoming):
                self._tell_session(now=True)

    # --- what the box says -----------------------------------------------------------------------

    def _publish_state(self, force: bool = False) -> None:
        link = self.link
        if link is None or not link.up.is_set():
            return
        document = self.view.document(self.config)
        key = significant(document)
        now = asyncio.get_running_loop().time()
        if force or key != self._sent or now - self._sent_at >= STATE_EVERY_S:
            link.publish(self.topics.state, json.dumps(document, ensure_ascii=False), retain=True)
            self._sent, self._sent_at = key, now

    def _publish_discovery(self) -> None:
        if self.link is not None and self.config.mqtt.discovery:
            self.link.publish(self.topics.discovery, discovery.encoded(self.config, self.topics), retain=True)

    def _tell_session(self, now: bool = False) -> None:
        """The fleet's budget to the session: on news, and repeated (a session that restarts hears it)."""
        if not self.topics.fleet or not self.roster.settled:
            return
        clock = asyncio.get_running_loop().time()
        if now or clock - self._budget_at >= REPEAT_S:
            self.bus.publish(self.roster.message())
            self._budget_at = clock

    async def _follow_bus(self) -> None:
        async for msg in self._states:
            self.view.handle(msg)
            if isinstance(msg, Caption) and msg.final and self.config.mqtt.captions and self.link is not None:
                # Private: only with [mqtt] captions = true, only whole utterances, never retained.
                caption = {"utterance": msg.utterance, "kind": msg.kind, "language": msg.language, "text": msg.text}
                self.link.publish(self.topics.captions, json.dumps(caption, ensure_ascii=False), qos=0)

    async def _follow_answers(self) -> None:
        async for msg in self._answers:
            if isinstance(msg, RemoteAnswer) and self.requests is not None:
                self.requests.answered(msg)

    def _count(self) -> None:
        for part in (self.link.counters if self.link else {}, self.requests.counters if self.requests else {}):
            self.counters.update(part)
        self.counters["secrets_withheld"] = self.guard.withheld
        self.counters["fleet_boxes"] = len(self.roster.boxes)
        self.counters["fleet_sessions_per_minute"] = self.roster.per_minute

    # --- config ----------------------------------------------------------------------------------

    async def apply_config(self, new: config_mod.Config, changed: set[str]) -> None:
        old, self.config = self.config, new
        self.view.expect(backend.processes(new))
        if KEY_SECTION in changed:
            self.guard.add(config_mod.api_key(new)[0])
        if _link_settings(old) != _link_settings(new):
            await self._relink(old, new)
        elif old.mqtt.discovery and not new.mqtt.discovery:
            self._withdraw_discovery()
        elif new.mqtt.discovery != old.mqtt.discovery or new.service.model != old.service.model:
            self._publish_discovery()  # announced again; the selects offer the model's languages
        self._publish_state(force=True)

    def _withdraw_discovery(self) -> None:
        if self.link is not None:
            self.link.publish(self.topics.discovery, "", retain=True)  # an empty config removes the device

    async def _relink(self, old: config_mod.Config, new: config_mod.Config) -> None:
        """Another broker, prefix or identity: leave cleanly, then join again as the config says."""
        if old.mqtt.discovery and Topics.of(old).discovery != Topics.of(new).discovery:
            self._withdraw_discovery()  # it comes back under its new id: none left behind unavailable
        await self._close_link()
        self.link, self.requests = None, None
        self.topics = Topics.of(new)
        self.roster = FleetRoster(self.topics, self.log)
        self.view.box = self.topics.box
        self._sent = None
        if new.mqtt.broker is None:
            self.log.info("[mqtt] broker unset: disconnected; this process idles until one is set")
            return
        try:
            self.link = self._new_link(new)
        except (OSError, ValueError) as exc:
            self.log.error("cannot join the broker as now configured: %s", exc)
            return
        self.log.info("joining %s as %s", new.mqtt.broker, self.topics.prefix)
        self._open_link()


def _link_settings(cfg: config_mod.Config) -> dict[str, Any]:
    """What the link is built from: a change of any of it means joining the broker again."""
    return cfg.mqtt.model_dump(exclude={"captions", "discovery"})
