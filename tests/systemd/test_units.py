"""The units pass systemd's own checks: `systemd-analyze verify` silent, `security` exposure OK or better."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from daemon.bus import ON_DEMAND, OPTIONAL_PROCESSES, PROCESSES
from daemon.config import EngineConfig
from tests.helpers import REPO

UNITS = REPO / "systemd"
SERVICES = [f"tolk-{name}.service" for name in PROCESSES + OPTIONAL_PROCESSES]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root holding the units, the ExecStart/ExecReload binaries and Debian's own units."""
    root = tmp_path_factory.mktemp("root")
    for src, dst in ((Path("/lib/systemd/system"), root / "lib/systemd/system"),):
        shutil.copytree(src, dst, symlinks=True)
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/tolk").write_text("#!/bin/sh\n")
    (root / "usr/local/bin/tolk").chmod(0o755)
    (root / "bin").mkdir()
    shutil.copy("/bin/kill", root / "bin/kill")
    dest = root / "etc/systemd/system"
    dest.mkdir(parents=True)
    for unit in UNITS.iterdir():
        shutil.copy(unit, dest / unit.name)
    return root


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


@pytest.mark.parametrize("unit", [*SERVICES, "tolk-engine.socket", "tolk-screen.service", "tolk.target"])
def test_verify_is_silent(root: Path, unit: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "verify", f"--root={root}", unit], capture_output=True, text=True, cwd=root
    )
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


@pytest.mark.parametrize("unit", SERVICES)
def test_security_exposure_is_ok_or_better(root: Path, unit: str) -> None:
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", f"--root={root}", unit],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 4.0


@pytest.mark.parametrize("name", PROCESSES + OPTIONAL_PROCESSES)
def test_each_unit_runs_its_process_under_the_target(name: str) -> None:
    unit = _unit(f"tolk-{name}.service")
    assert unit["Unit"]["PartOf"] == "tolk.target"
    assert unit["Service"]["Type"] == "notify"
    assert unit["Service"]["ExecStart"] == f"/usr/local/bin/tolk service {name}"
    assert unit["Service"]["RuntimeDirectory"] == "tolk" and "WatchdogSec" in unit["Service"]
    if name in ON_DEMAND:
        # Started by its socket, which the target wants; its exit 0 (idle) is not restarted.
        assert unit["Service"]["Restart"] == "on-failure" and unit["Unit"]["Requires"] == f"tolk-{name}.socket"
        assert f"tolk-{name}.socket" in _unit("tolk.target")["Unit"]["Wants"]
        assert f"tolk-{name}.service" not in _unit("tolk.target")["Unit"]["Wants"] and "Install" not in unit
    else:
        assert unit["Service"]["Restart"] == "always" and unit["Install"]["WantedBy"] == "tolk.target"
        assert f"tolk-{name}.service" in _unit("tolk.target")["Unit"]["Wants"]


def test_the_engines_socket_is_where_the_session_looks_for_it() -> None:
    socket_unit = _unit("tolk-engine.socket")
    assert socket_unit["Socket"]["ListenStream"] == EngineConfig().listen
    assert socket_unit["Socket"]["Accept"] == "no" and socket_unit["Unit"]["PartOf"] == "tolk.target"


def test_the_screen_comes_after_control_and_only_when_enabled() -> None:
    unit = _unit("tolk-screen.service")
    assert "tolk-control.service" in unit["Unit"]["After"] and unit["Unit"]["PartOf"] == "tolk.target"
    assert unit["Service"]["ExecStart"] == "/usr/local/bin/tolk screen" and unit["Service"]["Restart"] == "always"
    assert unit["Unit"]["ConditionPathExistsGlob"] == "/dev/dri/card*"  # no display: skipped
    assert "tolk-screen.service" not in _unit("tolk.target")["Unit"]["Wants"]  # enabled by the owner


#: Settings a process unit may set its own way (what it needs: devices, network, limits, order);
#: every other line of the process units is the shared lifecycle and sandbox, word for word.
PER_PROCESS = frozenset(
    {
        "Description", "After", "Wants", "Before", "ExecCondition", "ExecStart", "SyslogIdentifier",
        "WatchdogSec", "TimeoutStartSec", "MemoryDenyWriteExecute", "SupplementaryGroups", "DeviceAllow",
        "PrivateNetwork", "PrivateDevices", "IPAddressDeny", "RestrictAddressFamilies", "LimitRTPRIO",
        "LimitMEMLOCK", "MemoryMax", "LoadCredential", "SetCredential", "Restart", "Requires", "WantedBy",
    }
)  # fmt: skip


def _shared_lines(name: str) -> list[str]:
    lines = (UNITS / f"tolk-{name}.service").read_text().splitlines()
    settings = [line for line in lines if "=" in line and not line.startswith("#")]
    return [line for line in settings if line.split("=", 1)[0] not in PER_PROCESS]


def test_the_process_units_share_their_lifecycle_and_sandbox_word_for_word() -> None:
    """One literal unit per process (no template: the names stay what operators type), kept from
    drifting apart: a setting added to one unit is added to all, or named here as its own."""
    first, *others = PROCESSES + OPTIONAL_PROCESSES
    shared = _shared_lines(first)
    assert len(shared) > 40, shared
    for name in others:
        assert _shared_lines(name) == shared, name
