"""``[mqtt]``: validated with clear errors; the box's id; the process runs only with a broker."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from daemon import backend, fleet
from daemon import config as config_mod
from services.mqtt.topics import Topics
from tests.helpers import service_env, tolk_cmd


def _problems(mqtt: dict) -> str:
    with pytest.raises(config_mod.ConfigError) as info:
        config_mod.validate({"mqtt": mqtt})
    return " ".join(info.value.problems)


@pytest.mark.parametrize(
    ("mqtt", "says"),
    [
        ({"broker": "mqtt://10.1.2.3:1883"}, "use mqtts://, or set allow_plain = true"),
        ({"broker": "tcp://broker.lan"}, "is not a broker URL"),
        ({"broker": "mqtts://broker.lan:99999"}, "is not a broker URL"),
        ({"broker": "mqtts://user:pw@broker.lan"}, "set [mqtt] username and password_file instead"),
        ({"broker": "mqtts://broker.lan/tolk"}, "nothing after it"),
        ({"prefix": "tolk/#"}, "no wildcards"),
        ({"prefix": "/tolk/a"}, "no leading or trailing '/'"),
        ({"fleet_topic": "venue/+/budget"}, "no wildcards"),
        ({"box_id": "kiosk 7"}, "is not a box id"),
        ({"password": "hunter2"}, "unknown key in [mqtt]"),
    ],
)
def test_mistakes_are_named(mqtt: dict, says: str) -> None:
    assert says in _problems(mqtt)


def test_what_is_allowed() -> None:
    cfg = config_mod.validate({"mqtt": {"broker": "mqtt://10.1.2.3", "allow_plain": True}})
    assert cfg.mqtt.broker == "mqtt://10.1.2.3" and not cfg.mqtt.secure
    assert config_mod.validate({"mqtt": {"broker": "mqtt://127.0.0.1:1883"}}).mqtt.broker  # loopback: no TLS needed
    cfg = config_mod.validate({"mqtt": {"broker": "mqtts://broker.lan", "box_id": "gate-12", "prefix": "airport/t1"}})
    assert cfg.mqtt.secure and cfg.mqtt.captions is False and cfg.mqtt.discovery_prefix == "homeassistant"
    topics = Topics.of(cfg)
    assert topics.state == "airport/t1/state" and topics.discovery == "homeassistant/device/tolk_gate-12/config"
    assert Topics.of(config_mod.validate({"mqtt": {"box_id": "gate-12"}})).prefix == "tolk/gate-12"


def test_the_password_cannot_be_pointed_at_over_http() -> None:
    from services.control.store import secret_problems

    assert secret_problems({"mqtt": {"password_file": "/tmp/x"}})
    assert not secret_problems({"mqtt": {"username": "box"}})


def test_the_box_id_comes_from_the_machine_id_hashed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    machine_id = "0123456789abcdef0123456789abcdef"
    (tmp_path / "machine-id").write_text(machine_id + "\n")
    monkeypatch.setattr(fleet, "MACHINE_ID", tmp_path / "machine-id")
    box = fleet.box_id(config_mod.Config())
    assert len(box) == fleet.ID_CHARS and box == fleet.box_id(config_mod.Config())  # stable
    # machine-id(5): never published as it is, nor a plain hash of it that could be looked up.
    assert box not in machine_id and box not in hashlib.sha256(machine_id.encode()).hexdigest()
    (tmp_path / "machine-id").write_text("fedcba9876543210fedcba9876543210\n")
    assert fleet.box_id(config_mod.Config()) != box
    assert fleet.box_id(config_mod.validate({"mqtt": {"box_id": "gate-12"}})) == "gate-12"


def test_the_process_runs_only_with_a_broker(tmp_path: Path) -> None:
    without = tmp_path / "without.toml"
    without.write_text("[mqtt]\ncaptions = false\n")
    with_broker = tmp_path / "with.toml"
    with_broker.write_text('[mqtt]\nbroker = "mqtts://broker.lan:8883"\n')
    assert "mqtt" not in backend.processes(config_mod.load(without))
    assert backend.processes(config_mod.load(with_broker))[-1] == "mqtt"
    env = service_env(tmp_path)
    skipped = subprocess.run(tolk_cmd("service", "mqtt", "--check", "-c", str(without)), env=env,
                             capture_output=True, text=True)  # fmt: skip
    assert skipped.returncode == 1 and "no broker" in skipped.stdout
    runs = subprocess.run(tolk_cmd("service", "mqtt", "--check", "-c", str(with_broker)), env=env)
    assert runs.returncode == 0
