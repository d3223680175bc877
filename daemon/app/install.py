"""``tolk install`` / ``tolk uninstall``: put the box under systemd, idempotently.

install: the ``tolk`` system user (groups audio, video, systemd-journal), the units in ``/etc/systemd/system``,
the shipped config as ``/etc/tolk/tolk.toml`` (an existing one is never touched), the API key
as the credential file ``/etc/tolk/credentials/dashscope-api-key`` (root, 0600; the session
unit reads it through ``LoadCredential=``), ``/usr/local/bin/tolk`` linking to this checkout's
entry point, and ``systemctl daemon-reload`` when systemd runs. Running it again changes
nothing that is already right. ``--root`` installs into another tree (an image, a test).

uninstall: stops and disables the units when systemd runs, removes the units, the credential
and the command link; the config, the state directory and the user stay unless ``--purge``
(as Debian's remove and purge).
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parents[2]
USER = "tolk"
GROUPS = ("audio", "video", "systemd-journal")  # the last: the logs download reads the journal
UNIT_DIR = Path("etc/systemd/system")
CONFIG = Path("etc/tolk/tolk.toml")
CREDENTIALS = Path("etc/tolk/credentials")
KEY_FILE = CREDENTIALS / "dashscope-api-key"
COMMAND = Path("usr/local/bin/tolk")
DOC = Path("usr/share/doc/tolk/README.md")
STATE_DIR = Path("var/lib/tolk")
JOURNALD = Path("etc/systemd/journald.conf.d/tolk.conf")
#: Where ProtectHome= hides the checkout from the units.
HIDDEN_FROM_UNITS = ("/home", "/root", "/run/user")


class InstallError(Exception):
    """Something the person running the command must fix; the message says what."""


def units() -> list[Path]:
    folder = CHECKOUT / "systemd"
    found = sorted(p for p in folder.glob("tolk*") if p.suffix in (".service", ".socket", ".target", ".path"))
    if not found:
        raise InstallError(f"no units in {folder}: run tolk install from a checkout of tolk")
    return found


def systemd_running(root: Path) -> bool:
    """sd_booted(3): systemd is PID 1 of the system being installed into."""
    return root == Path("/") and Path("/run/systemd/system").is_dir()


class Installer:
    def __init__(self, root: Path, say: Callable[[str], None] = print) -> None:
        self.root = root
        self.say = say
        self.changed = 0

    def at(self, relative: Path) -> Path:
        return self.root / relative

    def shown(self, relative: Path) -> str:
        return "/" + str(relative) if self.root == Path("/") else str(self.at(relative))

    def did(self, line: str) -> None:
        self.changed += 1
        self.say(line)

    # --- install -------------------------------------------------------------------------------

    def install(self, key: str | None, entry_point: Path, create_user: bool) -> None:
        if create_user:
            self.user()
        self.install_units()
        self.file(CHECKOUT / "README.md", DOC, 0o644)
        self.journald()
        self.config()
        self.credential(key)
        self.command(entry_point)
        if self.changed and systemd_running(self.root):
            run(["systemctl", "daemon-reload"])
            self.say("systemctl daemon-reload")
        if not self.changed:
            self.say("tolk is installed; nothing changed")
        self.say("start it with: systemctl enable --now tolk.target")

    def user(self) -> None:
        passwd = self.at(Path("etc/passwd"))
        if not passwd.exists():
            self.say(f"no {passwd}: the {USER} user is not created")
            return
        root_args = [] if self.root == Path("/") else ["--root", str(self.root)]
        groups = _groups(self.root)
        for group in GROUPS:
            if group not in groups:
                run(["groupadd", *root_args, "--system", group])
                self.did(f"created group {group}")
        if _has_user(self.root, USER):
            missing = [g for g in GROUPS if USER not in _groups(self.root).get(g, ())]
            if missing:
                run(["usermod", *root_args, "--append", "--groups", ",".join(missing), USER])
                self.did(f"added user {USER} to {', '.join(missing)}")
            return
        run(
            ["useradd", *root_args, "--system", "--user-group", "--no-create-home",
             "--home-dir", "/" + str(STATE_DIR), "--shell", "/usr/sbin/nologin",
             "--groups", ",".join(GROUPS), "--comment", "tolk kiosk translation appliance", USER]
        )  # fmt: skip
        self.did(f"created system user {USER} (groups {', '.join(GROUPS)})")

    def journald(self) -> None:
        """The journal in memory, capped (config/journald.conf): logs do not wear the SD card."""
        before = self.changed
        self.file(CHECKOUT / "config" / "journald.conf", JOURNALD, 0o644)
        if self.changed != before and systemd_running(self.root):
            run(["systemctl", "restart", "systemd-journald.service"])

    def install_units(self) -> None:
        for unit in units():
            self.file(unit, UNIT_DIR / unit.name, 0o644)

    def file(self, src: Path, relative: Path, mode: int) -> None:
        """Ours to own: replaced when it differs (an upgrade brings new units)."""
        dst = self.at(relative)
        if dst.is_file() and not dst.is_symlink() and filecmp.cmp(src, dst, shallow=False):
            if dst.stat().st_mode & 0o7777 != mode:
                dst.chmod(mode)
                self.did(f"mode {mode:04o} on {self.shown(relative)}")
            return
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.tolk-new")
        shutil.copyfile(src, tmp)
        tmp.chmod(mode)
        os.replace(tmp, dst)
        self.did(f"installed {self.shown(relative)}")

    def config(self) -> None:
        dst = self.at(CONFIG)
        if dst.exists():
            self.say(f"kept {self.shown(CONFIG)} (an existing config is never replaced)")
            return
        self.at(CONFIG.parent).mkdir(parents=True, exist_ok=True)
        self.at(CONFIG.parent).chmod(0o755)
        self.file(CHECKOUT / "config" / "tolk.toml", CONFIG, 0o644)

    def credential(self, key: str | None) -> None:
        folder, dst = self.at(CREDENTIALS), self.at(KEY_FILE)
        folder.mkdir(parents=True, exist_ok=True)
        if folder.stat().st_mode & 0o7777 != 0o700:
            folder.chmod(0o700)
        if key is None and dst.exists():
            self._secure(dst)
            self.say(f"kept the API key in {self.shown(KEY_FILE)}")
            return
        if key is None:
            # LoadCredential= refuses to start a unit whose file is missing: an empty one lets the
            # session start and say on /health and the screen that the key is missing.
            self.say(
                "no API key installed: give one with --api-key-file FILE (or - for stdin); "
                "until then the session reports that the key is missing"
            )
        elif dst.exists() and dst.read_text(encoding="utf-8").strip() == key:
            self._secure(dst)
            return
        tmp = dst.with_name(f".{dst.name}.tolk-new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        # Created 0600 from the first byte: the key is never readable by anyone else, not even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(key + "\n" if key else "")
        os.chown(tmp, 0, 0)
        os.replace(tmp, dst)
        self.did(f"wrote {'the API key' if key else 'an empty API key'} to {self.shown(KEY_FILE)} (root, 0600)")

    def _secure(self, path: Path) -> None:
        st = path.stat()
        if st.st_mode & 0o7777 != 0o600 or (st.st_uid, st.st_gid) != (0, 0):
            os.chown(path, 0, 0)
            path.chmod(0o600)
            self.did(f"made {self.shown(KEY_FILE)} root-owned, 0600")

    def command(self, entry_point: Path) -> None:
        link = self.at(COMMAND)
        if not entry_point.is_file():
            raise InstallError(f"no entry point {entry_point}: install tolk into a virtual environment first")
        for what, path in (("the entry point", str(entry_point)), ("the Python interpreter", sys.base_prefix)):
            if path.startswith(HIDDEN_FROM_UNITS):
                self.say(f"warning: {what} ({path}) is under a home directory, which ProtectHome= hides from"
                         " the units; use a checkout under /opt or /srv and a system Python")  # fmt: skip
        if link.is_symlink() and Path(os.readlink(link)) == entry_point:
            return
        if link.exists() and not link.is_symlink():
            raise InstallError(f"{self.shown(COMMAND)} exists and is not a link; move it away first")
        link.parent.mkdir(parents=True, exist_ok=True)
        tmp = link.with_name(".tolk.tolk-new")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        tmp.symlink_to(entry_point)
        os.replace(tmp, link)
        self.did(f"linked {self.shown(COMMAND)} -> {entry_point}")

    # --- uninstall -----------------------------------------------------------------------------

    def uninstall(self, purge: bool) -> None:
        names = [unit.name for unit in units()]
        if systemd_running(self.root):
            # Failing to stop what is not loaded is fine: uninstall must be repeatable.
            subprocess.run(["systemctl", "disable", "--now", *names], capture_output=True, check=False)
        for wants in sorted(self.at(UNIT_DIR).glob("*.wants")):
            for link in sorted(wants.glob("tolk*")):
                if link.is_symlink() and link.name in names:
                    link.unlink()
                    self.did(f"disabled {link.name} ({wants.name})")
        for name in names:
            self.remove(UNIT_DIR / name)
        self.remove(KEY_FILE)
        self.remove_dir(CREDENTIALS)
        if self.at(COMMAND).is_symlink():
            self.remove(COMMAND)
        self.remove(DOC)
        self.remove_dir(DOC.parent)
        self.remove(JOURNALD)
        self.remove_dir(JOURNALD.parent)
        if purge:
            self.remove(CONFIG)
            self.remove_dir(CONFIG.parent)
            if self.at(STATE_DIR).exists():
                shutil.rmtree(self.at(STATE_DIR))
                self.did(f"removed {self.shown(STATE_DIR)}")
            if _has_user(self.root, USER):
                root_args = [] if self.root == Path("/") else ["--root", str(self.root)]
                run(["userdel", *root_args, USER])
                self.did(f"removed user {USER}")
        elif self.at(CONFIG).exists():
            self.say(f"kept {self.shown(CONFIG)}, {self.shown(STATE_DIR)} and the {USER} user (--purge removes them)")
        if self.changed and systemd_running(self.root):
            run(["systemctl", "daemon-reload"])
        if not self.changed:
            self.say("tolk is not installed; nothing to remove")

    def remove(self, relative: Path) -> None:
        path = self.at(relative)
        if path.is_symlink() or path.exists():
            path.unlink()
            self.did(f"removed {self.shown(relative)}")

    def remove_dir(self, relative: Path) -> None:
        with contextlib.suppress(FileNotFoundError, OSError):
            self.at(relative).rmdir()  # only when empty: what someone else put there stays


def _groups(root: Path) -> dict[str, tuple[str, ...]]:
    groups: dict[str, tuple[str, ...]] = {}
    path = root / "etc/group"
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            parts = line.split(":")
            if len(parts) >= 4:
                groups[parts[0]] = tuple(m for m in parts[3].split(",") if m)
    return groups


def _has_user(root: Path, name: str) -> bool:
    path = root / "etc/passwd"
    return path.exists() and any(
        line.split(":", 1)[0] == name for line in path.read_text(encoding="utf-8").splitlines()
    )


def run(cmd: list[str]) -> None:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise InstallError(f"{' '.join(cmd)} failed: {(result.stderr or result.stdout).strip()}")


def read_key(source: str | None) -> str | None:
    """The key from a file or stdin (``-``); checked to be one plausible line, never echoed."""
    if source is None:
        return None
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
    except OSError as exc:
        raise InstallError(f"cannot read the API key from {source}: {exc.strerror or exc}") from None
    key = text.strip()
    if not key:
        raise InstallError(f"the API key from {'stdin' if source == '-' else source} is empty")
    if any(c.isspace() for c in key) or not key.isprintable():
        raise InstallError("the API key must be a single line with no spaces")
    return key


def default_entry_point() -> Path:
    """The ``tolk`` script of the environment this command runs from (not resolved: a venv's
    python is a link to the system one, and the script sits beside the link)."""
    return Path(sys.executable).parent / "tolk"


def main_install(root: str, api_key_file: str | None, entry_point: str | None, create_user: bool) -> int:
    if os.geteuid() != 0:
        print("tolk install: run as root (it creates a user and writes under /etc)", file=sys.stderr)
        return 1
    try:
        key = read_key(api_key_file)
        Installer(Path(root)).install(key, Path(entry_point) if entry_point else default_entry_point(), create_user)
    except InstallError as exc:
        print(f"tolk install: {exc}", file=sys.stderr)
        return 1
    return 0


def main_uninstall(root: str, purge: bool) -> int:
    if os.geteuid() != 0:
        print("tolk uninstall: run as root", file=sys.stderr)
        return 1
    try:
        Installer(Path(root)).uninstall(purge)
    except InstallError as exc:
        print(f"tolk uninstall: {exc}", file=sys.stderr)
        return 1
    return 0
