"""A real systemd, booted as PID 1 in private namespaces on a throwaway overlay of this machine's root.

``Container.boot()`` starts ``enter.sh`` under ``unshare``; the setup below runs in the new root
before systemd does: ``tolk install`` (the real one: user, units, credential, command link), a
config whose microphone is an alsa-lib ``file`` PCM reading a FIFO that a small feeder unit keeps
talking into at real time, a ``null`` speaker, and the protocol simulator as the service. A
``tolk-boot.target`` pulls in ``tolk.target``, journald and the two helpers; what the box does
not need (udev, sysctl, getty, networking, timers) is masked. ``run()`` executes a command inside
(nsenter); nothing of it reaches the host's files, network or devices.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent.parent
# The container mounts fresh /tmp, /var/tmp and /run, and the units add PrivateTmp=: a checkout
# there is shown to the container at /opt instead (an overlay: the host's files stay untouched).
INNER_REPO = Path("/opt/tolk-checkout") if str(REPO).startswith(("/tmp/", "/var/tmp/", "/run/")) else REPO
ENTRY = INNER_REPO / ".venv/bin/tolk"
PYTHON = INNER_REPO / ".venv/bin/python"
SIM_PORT = 8765
FIFO = "/var/lib/tolk-boot/mic.fifo"

MASKED = [
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service", "systemd-hwdb-update.service",
    "systemd-modules-load.service", "systemd-sysctl.service", "systemd-binfmt.service",
    "systemd-remount-fs.service", "systemd-firstboot.service", "systemd-machine-id-commit.service",
    "systemd-timesyncd.service", "systemd-networkd.service", "systemd-resolved.service",
    "networking.service", "ifupdown-pre.service", "kmod-static-nodes.service",
    "getty.target", "console-getty.service", "timers.target", "cryptsetup.target", "swap.target",
    "systemd-journal-flush.service", "systemd-pstore.service", "systemd-random-seed.service",
    "systemd-update-utmp.service", "dev-hugepages.mount", "dev-mqueue.mount",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount", "proc-sys-fs-binfmt_misc.automount",
    "systemd-ask-password-console.path", "systemd-ask-password-wall.path",
]  # fmt: skip

ASOUND = f"""
pcm.boot_mic {{
    type file
    slave.pcm null
    file "/dev/null"
    infile "{FIFO}"
    format raw
}}
pcm.boot_spk {{
    type null
}}
"""

CONFIG = f"""
[languages]
source = "zh"
target = "en"

[service]
url = "ws://127.0.0.1:{SIM_PORT}/api-ws/v1/realtime"

[audio]
capture_device = "boot_mic"
playback_device = "boot_spk"
period_ms = 20

[control]
listen = "127.0.0.1:8080"

[engine]
unload_after_s = 3
"""

# One 20 ms period of quiet noise every 20 ms, on a clock: a microphone in a quiet room.
FEEDER = f"""
import os, random, time
fd = os.open({FIFO!r}, os.O_RDWR)
period = bytes(random.randrange(256) & 0x07 for _ in range(640))
start, n = time.monotonic(), 0
while True:
    os.write(fd, period)
    n += 1
    time.sleep(max(0.0, start + n * 0.02 - time.monotonic()))
"""

BOOT_TARGET = """[Unit]
Description=tolk under test: the box, journald and the test helpers
Wants=tolk.target tolk-boot-mic.service tolk-boot-sim.service systemd-journald.socket
"""

MIC_UNIT = f"""[Unit]
Description=test microphone: a talker feeding the capture FIFO
Before=tolk-capture.service

[Service]
ExecStartPre=/bin/sh -c 'test -p {FIFO} || mkfifo -m 0644 {FIFO}'
ExecStart={PYTHON} /usr/local/lib/tolk-boot/feeder.py
"""

SIM_UNIT = f"""[Unit]
Description=test stand-in for the realtime service
Before=tolk-session.service

[Service]
ExecStart={ENTRY} simulator --port {SIM_PORT}
"""


def setup_script(package: Path | None = None) -> str:
    """``package``: install this .deb with dpkg (as a kiosk owner would) instead of ``tolk install``."""
    files = {
        "/etc/asound.conf": ASOUND,
        "/usr/local/lib/tolk-boot/feeder.py": FEEDER,
        "/etc/systemd/system/tolk-boot.target": BOOT_TARGET,
        "/etc/systemd/system/tolk-boot-mic.service": MIC_UNIT,
        "/etc/systemd/system/tolk-boot-sim.service": SIM_UNIT,
    }
    lines = ["set -euo pipefail", "rm -f /etc/machine-id && systemd-machine-id-setup --print >/dev/null"]
    for path, text in files.items():
        lines += [f"mkdir -p {shlex.quote(str(Path(path).parent))}", f"cat > {path} <<'TOLK_EOF'\n{text}\nTOLK_EOF"]
    lines += [*_checkout_outside_tmp(), *_interpreter_outside_home()]
    lines += [
        # A container image's policy-rc.d ("exit 101") would veto the maintainer scripts' starts
        # and stops; a kiosk has none.
        *([f"rm -f /usr/sbin/policy-rc.d && dpkg -i {INNER_REPO / package.relative_to(REPO)}"] if package
          else [f"{ENTRY} install --entry-point {ENTRY}"]),
        f"cat > /etc/tolk/tolk.toml <<'TOLK_EOF'\n{CONFIG}\nTOLK_EOF",
        "mkdir -p /var/lib/tolk-boot && chmod 0755 /var/lib/tolk-boot",
        *(f"ln -sf /dev/null /etc/systemd/system/{unit}" for unit in MASKED),
    ]
    return "\n".join(lines) + "\n"


def _checkout_outside_tmp() -> list[str]:
    """The venv names its checkout in scripts and the editable install's finder: point them at /opt."""
    if INNER_REPO == REPO:
        return []
    venv = INNER_REPO / ".venv"
    return [
        f"grep -lsF {REPO} {venv}/bin/* {venv}/lib/python3*/site-packages/*.pth "
        f"{venv}/lib/python3*/site-packages/__editable__* | xargs -r sed -i 's|{REPO}|{INNER_REPO}|g'"
    ]


def _interpreter_outside_home() -> list[str]:
    """ProtectHome= hides /root and /home from the units: a venv built on an interpreter there
    (pyenv) cannot start under them. In the throwaway root, show that interpreter at /opt and
    point the venv at it, as an installation would put it (see tolk install's warning)."""
    cfg = REPO / ".venv/pyvenv.cfg"  # read on the host; edited below inside the container
    home = next((line.split("=", 1)[1].strip() for line in cfg.read_text().splitlines() if line.startswith("home")), "")
    base = Path(home).parent
    if not str(base).startswith(("/root", "/home")):
        return []
    venv, host_venv = INNER_REPO / ".venv", REPO / ".venv"
    return [
        "mkdir -p /opt/tolk-python",
        f"mount --bind {base} /opt/tolk-python",
        f"sed -i 's|{base}|/opt/tolk-python|g' {venv}/pyvenv.cfg",
        # Its libpython too (the binary's own RUNPATH points into the hidden home).
        "echo /opt/tolk-python/lib > /etc/ld.so.conf.d/00-tolk-python.conf && ldconfig",
        *(
            f"ln -sfn \"$(readlink {venv}/bin/{name} | sed 's|{base}|/opt/tolk-python|')\" {venv}/bin/{name}"
            for name in ("python", "python3", "python3.11")
            if (host_venv / "bin" / name).is_symlink()
            and str(os.readlink(host_venv / "bin" / name)).startswith(str(base))
        ),
    ]


class BootRefused(Exception):
    """This machine will not boot a systemd in namespaces; the message says why."""


class Container:
    def __init__(self, workdir: Path, package: Path | None = None) -> None:
        self.workdir = workdir
        self.package = package
        self.console = workdir / "console.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid = 0
        self.cgroups_before = _cgroup_dirs()

    def boot(self, timeout: float = 60.0) -> None:
        script = self.workdir / "setup.sh"
        script.write_text(setup_script(self.package))
        with self.console.open("wb") as out:
            self.proc = subprocess.Popen(
                ["unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc",
                 "/bin/bash", str(HERE / "enter.sh"), str(script), str(REPO), str(INNER_REPO)],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"},
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while not self.pid:
            if self.proc.poll() is not None:
                raise BootRefused(f"the container exited ({self.proc.returncode}): {self.console_tail()}")
            if time.monotonic() > deadline:
                raise BootRefused(f"no systemd after {timeout:.0f} s: {self.console_tail()}")
            self.pid = self._systemd_pid()
            time.sleep(0.1)
        # Up when its manager answers; "degraded" is fine (a masked unit or two), "starting" is not yet.
        while True:
            state = self.run("systemctl", "is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BootRefused(f"systemd did not finish booting ({state!r}): {self.console_tail()}")
            time.sleep(0.2)

    def _systemd_pid(self) -> int:
        assert self.proc is not None
        with contextlib.suppress(OSError, ValueError):
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            for child in children:
                if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                    return int(child)
        return 0

    def run(self, *cmd: str, check: bool = True, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-m", "-u", "-i", "-n", "-p", "-r", "-w", *cmd],
            capture_output=True, text=True, timeout=timeout,
        )  # fmt: skip
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stdout}{result.stderr}")
        return result

    def show(self, unit: str, prop: str) -> str:
        return self.run("systemctl", "show", "-P", prop, unit).stdout.strip()

    def journal(self, *args: str) -> str:
        return self.run("journalctl", "--no-pager", *args, check=False).stdout

    def console_tail(self, chars: int = 3000) -> str:
        with contextlib.suppress(OSError):
            return self.console.read_text(errors="replace")[-chars:]
        return ""

    def shutdown(self) -> None:
        if self.proc is None:
            return
        if self.pid and self.proc.poll() is None:
            # SIGRTMIN+4: systemd's own "power off" when it runs in a container.
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGRTMIN + 4)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(20)
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid or self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        # The one thing a booted systemd leaves in the host's view: its emptied cgroups.
        for path in sorted(_cgroup_dirs() - self.cgroups_before, key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):
                path.rmdir()


def _cgroup_dirs() -> set[Path]:
    found: set[Path] = set()
    for top, dirs, _files in os.walk("/sys/fs/cgroup"):
        found.update(Path(top, d) for d in dirs)
    return found


def namespaces_refused() -> str | None:
    """Why this machine cannot boot a systemd in namespaces; None when it can."""
    cmd = ["unshare", "--pid", "--fork", "--mount", "--net", "--uts", "--ipc", "true"]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if result.returncode != 0:
        return result.stderr.strip() or f"exit {result.returncode}"
    if not Path("/lib/systemd/systemd").exists():
        return "no /lib/systemd/systemd"
    return None


@contextlib.contextmanager
def booted(workdir: Path, package: Path | None = None, timeout: float = 60.0) -> Iterator[Container]:
    """A booted container, shut down afterwards; a boot that fails raises BootRefused."""
    container = Container(workdir, package=package)
    try:
        container.boot(timeout=timeout)
        yield container
    finally:
        container.shutdown()


def running(box: Container, unit: str) -> bool:
    return box.show(unit, "ActiveState") == "active" and box.show(unit, "SubState") == "running"
