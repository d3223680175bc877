"""``tolk install`` / ``tolk uninstall`` into a scratch root: real useradd/userdel (``--root``), files, modes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from daemon.bus import PROCESSES
from tests.helpers import REPO, tolk_cmd

KEY = "sk-install-0b6c2f9e41d7"
ENTRY = REPO / ".venv/bin/tolk"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A root with the host's account files (useradd --root edits them there, never on the host)."""
    etc = tmp_path / "etc"
    etc.mkdir()
    for name in ("passwd", "group", "shadow", "gshadow", "login.defs"):
        if Path("/etc", name).exists():
            shutil.copy2(Path("/etc", name), etc / name)
    return tmp_path


def tolk(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        tolk_cmd(*args, "--root", str(root)), input=stdin, capture_output=True, text=True, cwd=REPO, timeout=60
    )


def install(root: Path, *args: str, stdin: str | None = None) -> str:
    result = tolk(root, "install", "--entry-point", str(ENTRY), *args, stdin=stdin)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_install_puts_everything_in_place_with_safe_modes(root: Path) -> None:
    host_passwd = Path("/etc/passwd").read_text()
    out = install(root, "--api-key-file", "-", stdin=KEY + "\n")
    assert KEY not in out

    passwd = (root / "etc/passwd").read_text().splitlines()
    user = next(line for line in passwd if line.startswith("tolk:")).split(":")
    assert int(user[2]) < 1000 and user[5] == "/var/lib/tolk" and user[6] == "/usr/sbin/nologin"
    group_lines = (root / "etc/group").read_text().splitlines()
    groups = {line.split(":")[0]: line.split(":")[3].split(",") for line in group_lines}
    assert "tolk" in groups["audio"] and "tolk" in groups["video"]
    assert Path("/etc/passwd").read_text() == host_passwd, "the host's own accounts were touched"

    for name in [*(f"tolk-{p}.service" for p in PROCESSES), "tolk.target"]:
        unit = root / "etc/systemd/system" / name
        assert unit.read_bytes() == (REPO / "systemd" / name).read_bytes() and mode(unit) == 0o644
    config = root / "etc/tolk/tolk.toml"
    assert config.read_bytes() == (REPO / "config/tolk.toml").read_bytes() and mode(config) == 0o644
    # The journal in memory, capped: an SD card is not worn by logs.
    journald = root / "etc/systemd/journald.conf.d/tolk.conf"
    assert "Storage=volatile" in journald.read_text() and "RuntimeMaxUse=" in journald.read_text()
    assert mode(journald) == 0o644

    key = root / "etc/tolk/credentials/dashscope-api-key"
    st = key.stat()
    assert key.read_text() == KEY + "\n" and mode(key) == 0o600 and (st.st_uid, st.st_gid) == (0, 0)
    assert mode(key.parent) == 0o700
    link = root / "usr/local/bin/tolk"
    assert link.is_symlink() and os.readlink(link) == str(ENTRY)
    assert "systemctl enable --now tolk.target" in out


def test_install_is_idempotent_and_never_replaces_a_config(root: Path) -> None:
    config = root / "etc/tolk/tolk.toml"
    config.parent.mkdir(parents=True)
    config.write_text('[languages]\ntarget = "ja"\n')
    (root / "keyfile").write_text(KEY)
    install(root, "--api-key-file", str(root / "keyfile"))
    unit = root / "etc/systemd/system/tolk-session.service"
    before = {p: (p.read_bytes(), p.lstat().st_mtime_ns) for p in [unit, config]}

    again = install(root)  # no key given: the installed one stays
    assert "nothing changed" in again and "kept the API key" in again
    assert {p: (p.read_bytes(), p.lstat().st_mtime_ns) for p in [unit, config]} == before
    assert config.read_text() == '[languages]\ntarget = "ja"\n'
    assert sum(line.startswith("tolk:") for line in (root / "etc/passwd").read_text().splitlines()) == 1

    # A unit edited by hand, or a key file opened up, is put right.
    unit.write_text("[Unit]\n")
    key = root / "etc/tolk/credentials/dashscope-api-key"
    key.chmod(0o644)
    fixed = install(root)
    assert f"installed {unit}" in fixed and "0600" in fixed
    assert unit.read_bytes() == (REPO / "systemd/tolk-session.service").read_bytes() and mode(key) == 0o600


def test_a_bad_key_is_refused_clearly(root: Path) -> None:
    result = tolk(root, "install", "--entry-point", str(ENTRY), "--api-key-file", "-", stdin="sk-one two\n")
    assert result.returncode == 1 and "single line with no spaces" in result.stderr
    assert "sk-one" not in result.stderr + result.stdout
    result = tolk(root, "install", "--entry-point", str(ENTRY), "--api-key-file", "-", stdin="\n")
    assert result.returncode == 1 and "empty" in result.stderr
    result = tolk(root, "install", "--entry-point", str(root / "nope"))
    assert result.returncode == 1 and "no entry point" in result.stderr


def test_uninstall_removes_what_install_put_and_purge_the_rest(root: Path) -> None:
    install(root, "--api-key-file", "-", stdin=KEY)
    # Enabled, as `systemctl enable tolk.target` leaves it.
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir()
    (wants / "tolk.target").symlink_to("/etc/systemd/system/tolk.target")
    (root / "var/lib/tolk").mkdir(parents=True)
    (root / "var/lib/tolk/config.toml").write_text("[languages]\n")

    result = tolk(root, "uninstall")
    assert result.returncode == 0, result.stderr
    assert not list((root / "etc/systemd/system").rglob("tolk*"))
    assert not (root / "etc/systemd/journald.conf.d").exists()
    assert not (root / "etc/tolk/credentials").exists() and not (root / "usr/local/bin/tolk").is_symlink()
    assert (root / "etc/tolk/tolk.toml").exists() and (root / "var/lib/tolk/config.toml").exists()
    assert "tolk:" in (root / "etc/passwd").read_text()
    assert "nothing to remove" in tolk(root, "uninstall").stdout

    result = tolk(root, "uninstall", "--purge")
    assert result.returncode == 0, result.stderr
    assert not (root / "etc/tolk").exists() and not (root / "var/lib/tolk").exists()
    assert not any(line.startswith("tolk:") for line in (root / "etc/passwd").read_text().splitlines())
    assert "nothing to remove" in tolk(root, "uninstall", "--purge").stdout
