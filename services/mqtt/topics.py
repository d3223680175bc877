"""The box's topics on the broker, all derived from ``[mqtt]`` and the box id.

Under ``<prefix>`` (``tolk/<box id>`` unless set):

- ``availability`` (retained): ``online``; ``offline`` on a clean stop, and as the broker's last
  will when the box dies;
- ``state`` (retained): JSON of the processes, session, languages, model, errors and tokens per
  hour, on change and every minute;
- ``captions``: final captions, only with ``[mqtt] captions = true`` (they are private);
- ``config/set`` → ``config/result``: a ``PATCH /api/config`` body; what was applied, or refused and why;
- ``command`` → ``command/result``: ``mute``, ``unmute``, ``restart-session``; the answer of the
  process that carried it out.

Home Assistant's device discovery goes to ``<discovery prefix>/device/tolk_<box id>/config``; its
birth message on ``<discovery prefix>/status``. The fleet's budget lives under ``[mqtt] fleet_topic``.
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon import config as config_mod
from daemon import fleet

#: What an operator may ask of a box over MQTT.
COMMANDS = ("mute", "unmute", "restart-session")


@dataclass(frozen=True)
class Topics:
    box: str
    prefix: str
    discovery_prefix: str
    fleet: str | None

    @classmethod
    def of(cls, cfg: config_mod.Config) -> Topics:
        return cls(fleet.box_id(cfg), fleet.prefix(cfg), cfg.mqtt.discovery_prefix, cfg.mqtt.fleet_topic)

    def _under(self, name: str) -> str:
        return f"{self.prefix}/{name}"

    @property
    def availability(self) -> str:
        return self._under("availability")

    @property
    def state(self) -> str:
        return self._under("state")

    @property
    def captions(self) -> str:
        return self._under("captions")

    @property
    def config_set(self) -> str:
        return self._under("config/set")

    @property
    def config_result(self) -> str:
        return self._under("config/result")

    @property
    def command(self) -> str:
        return self._under("command")

    @property
    def command_result(self) -> str:
        return self._under("command/result")

    @property
    def discovery(self) -> str:
        return f"{self.discovery_prefix}/device/tolk_{self.box}/config"

    @property
    def ha_status(self) -> str:
        return f"{self.discovery_prefix}/status"

    @property
    def fleet_budget(self) -> str | None:
        return f"{self.fleet}/budget" if self.fleet else None

    @property
    def fleet_boxes(self) -> str | None:
        return f"{self.fleet}/boxes/+" if self.fleet else None

    @property
    def fleet_member(self) -> str | None:
        return f"{self.fleet}/boxes/{self.box}" if self.fleet else None

    def subscriptions(self) -> list[str]:
        """What the box listens to on the broker (Home Assistant's birth even with discovery off:
        the box ignores it then, and needs no new subscription when discovery is turned on)."""
        wanted = [self.config_set, self.command, self.ha_status]
        if self.fleet_budget and self.fleet_boxes:
            wanted += [self.fleet_budget, self.fleet_boxes]
        return wanted

    def member_of_fleet(self, topic: str) -> str | None:
        """The box id of a ``<fleet_topic>/boxes/<id>`` topic, else None."""
        head = f"{self.fleet}/boxes/"
        if self.fleet and topic.startswith(head) and "/" not in topic[len(head) :]:
            return topic[len(head) :]
        return None
