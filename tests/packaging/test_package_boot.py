"""The amd64 package under a real systemd: installed with dpkg on a throwaway overlay of this
machine (tests/systemd/boot/), booted, the box up as ``tolk``; then purged, leaving nothing."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import rmtree, short_tmpdir, wait_until
from tests.systemd.boot.container import INNER_REPO, REPO, BootRefused, Container, booted, namespaces_refused, running

#: What the boot's config runs: no camera source (its unit skipped), no engine in the package.
UNITS = [f"tolk-{name}.service" for name in ("capture", "session", "playback", "control")]


REFUSED = namespaces_refused()
pytestmark = pytest.mark.skipif(REFUSED is not None, reason=f"cannot boot systemd in namespaces here: {REFUSED}")


@pytest.fixture(scope="module")
def upgrade_deb(amd64_deb: Path) -> Path:
    """The same package as a newer version: what an upgrade installs. Made before the boot: the
    booted system sees the host's files through an overlay, which may not show later ones."""
    version = subprocess.run(["dpkg-deb", "-f", str(amd64_deb), "Version"], capture_output=True, text=True,
                             check=True).stdout.strip() + "+1"  # fmt: skip
    out = REPO / "build" / "deb-test" / "upgrade"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    subprocess.run(["dpkg-deb", "-R", str(amd64_deb), str(out / "tree")], check=True)
    control = out / "tree/DEBIAN/control"
    control.write_text(re.sub(r"^Version: .*$", f"Version: {version}", control.read_text(), flags=re.M))
    new = out / f"tolk_{version}_amd64.deb"
    subprocess.run(["dpkg-deb", "-Znone", "--build", str(out / "tree"), str(new)], check=True, capture_output=True)
    shutil.rmtree(out / "tree")
    return new


@pytest.fixture(scope="module")
def box(amd64_deb: Path, upgrade_deb: Path) -> Iterator[Container]:
    workdir = short_tmpdir("tkpkg")
    try:
        # dpkg -i and the bytecode compile run before systemd starts: a longer boot.
        with booted(workdir, package=amd64_deb, timeout=300) as container:
            yield container
    except BootRefused as exc:
        pytest.fail(f"systemd did not boot with the package installed: {exc}")
    finally:
        rmtree(workdir)


def test_the_installed_package_runs_the_box_as_tolk(box: Container) -> None:
    assert box.run("systemctl", "is-enabled", "tolk.target").stdout.strip() == "enabled"
    wait_until(lambda: all(running(box, u) for u in UNITS), 90, what="all four units active")
    for unit in UNITS:
        pid = box.show(unit, "MainPID")
        assert box.run("stat", "-c", "%U", f"/proc/{pid}").stdout.strip() == "tolk", unit
        cmdline = box.run("cat", f"/proc/{pid}/cmdline").stdout.split("\0")
        assert "/usr/bin/tolk" in cmdline or "/opt/tolk/bin/tolk" in cmdline, (unit, cmdline)
    groups = box.run("id", "-nG", "tolk").stdout.split()
    assert {"tolk", "audio", "video", "systemd-journal"} <= set(groups), groups
    # The package leaves the engine out: no engine units, and the target names none.
    assert box.show("tolk-engine.socket", "LoadState") == "not-found"
    assert "tolk-engine" not in box.run("systemctl", "show", "-p", "Wants", "--value", "tolk.target").stdout
    assert box.show("tolk-camera.service", "ActiveState") == "inactive"  # no camera source
    key = box.run("stat", "-c", "%a %U", "/etc/tolk/credentials/dashscope-api-key").stdout.split()
    assert key == ["600", "root"]
    wait_until(lambda: "session live" in box.journal("-u", "tolk-session.service"), 30, what="a live session")


def test_an_upgrade_keeps_config_key_and_state_and_restarts_the_units(box: Container, upgrade_deb: Path) -> None:
    wait_until(lambda: all(running(box, u) for u in UNITS), 90, what="all four units active")
    before = {u: box.show(u, "MainPID") for u in UNITS}
    config = box.run("cat", "/etc/tolk/tolk.toml").stdout  # the owner's, not the shipped one
    box.run("sh", "-c", "echo kept > /var/lib/tolk/upgrade-marker")
    old = box.run("dpkg-query", "-W", "-f", "${Version}", "tolk").stdout
    box.run("dpkg", "-i", str(INNER_REPO / upgrade_deb.relative_to(REPO)), timeout=300)
    assert box.run("dpkg-query", "-W", "-f", "${Version}", "tolk").stdout == old + "+1"
    assert box.run("cat", "/etc/tolk/tolk.toml").stdout == config
    assert box.run("cat", "/var/lib/tolk/upgrade-marker").stdout.strip() == "kept"
    assert box.run("stat", "-c", "%a", "/etc/tolk/credentials/dashscope-api-key").stdout.strip() == "600"
    restarted = lambda: all(running(box, u) and box.show(u, "MainPID") != before[u] for u in UNITS)  # noqa: E731
    wait_until(restarted, 90, what="every unit restarted on the new version")


def test_remove_stops_the_box_and_keeps_its_config_then_purge_leaves_nothing(box: Container) -> None:
    wait_until(lambda: running(box, "tolk-control.service"), 90, what="control running")
    box.run("dpkg", "--remove", "tolk", timeout=180)
    for unit in [*UNITS, "tolk-camera.service", "tolk-camera.path", "tolk.target"]:
        assert box.show(unit, "ActiveState") in ("inactive", ""), unit
    kept = box.run("sh", "-c", "ls -d /etc/tolk/tolk.toml /etc/tolk/credentials/dashscope-api-key; true").stdout
    assert len(kept.split()) == 2, kept
    assert box.run("getent", "passwd", "tolk", check=False).returncode == 0
    assert box.run("sh", "-c", "ls /opt/tolk /usr/bin/tolk 2>/dev/null; true").stdout.strip() == ""

    box.run("dpkg", "--purge", "tolk", timeout=180)
    left = box.run(
        "sh", "-c",
        "ls -d /opt/tolk /etc/tolk /var/lib/tolk /usr/bin/tolk /lib/systemd/system/tolk* "
        "/etc/systemd/system/*/tolk* /usr/lib/systemd/journald.conf.d/tolk.conf 2>/dev/null; true",
    ).stdout.split()  # fmt: skip
    assert not left, left
    assert box.run("getent", "passwd", "tolk", check=False).returncode != 0
    assert box.run("getent", "group", "tolk", check=False).returncode != 0
    assert box.run("dpkg-query", "-W", "tolk", check=False).returncode != 0
