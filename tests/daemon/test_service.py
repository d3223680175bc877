"""The shared lifecycle, through a real NOTIFY_SOCKET and real signals."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers import REPO, NotifySocket, service_env, wait_until


def _start(rundir: Path, notify: NotifySocket, config: Path, **env: str) -> subprocess.Popen[bytes]:
    environ = service_env(rundir, NOTIFY_SOCKET=notify.path, **env)
    return subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.lifecycle_probe", str(config)],
        env=environ,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


def _config(rundir: Path, target: str = "en") -> Path:
    path = rundir / "tolk.toml"
    path.write_text(f'[languages]\nsource = "zh"\ntarget = "{target}"\n')
    return path


def test_ready_only_after_start_and_clean_stop(rundir: Path, notify: NotifySocket) -> None:
    proc = _start(rundir, notify, _config(rundir))
    try:
        notify.wait_for("READY=1")
        # start() had finished opening its device before READY was sent.
        assert (rundir / "opened").exists()
        ready = next(m for m in notify.messages if "READY=1" in m)
        assert "STATUS=" in ready
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        notify.wait_for("STOPPING=1", timeout=2)
        assert (rundir / "stopped").read_text() == "yes"
    finally:
        proc.kill()


def test_watchdog_follows_the_work_loop(rundir: Path, notify: NotifySocket) -> None:
    proc = _start(rundir, notify, _config(rundir), WATCHDOG_USEC="400000")
    try:
        notify.wait_for("READY=1")
        assert sum("WATCHDOG=1" in m for m in notify.drain(1.2)) >= 3
        (rundir / "stall").touch()
        time.sleep(0.7)  # past fresh_within_s
        notify.drain(0.05)  # discard the pings sent before the stall was noticed
        assert not any("WATCHDOG=1" in m for m in notify.drain(1.0)), "pinged while the loop was stalled"
        (rundir / "stall").unlink()
        assert any("WATCHDOG=1" in m for m in notify.drain(1.0)), "pings did not resume"
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_supervisor_that_reads_late_stalls_nothing(rundir: Path, notify: NotifySocket) -> None:
    # Pets every 0.1 s into a socket nobody reads: its queue (10 datagrams) is full after a second.
    proc = _start(rundir, notify, _config(rundir), WATCHDOG_USEC="200000")
    try:
        notify.wait_for("READY=1")
        time.sleep(2.5)
        _config(rundir, target="ja")
        proc.send_signal(signal.SIGHUP)  # the loop still answers signals: it is not stuck in a send
        wait_until(lambda: (rundir / "applied").exists(), 5, what="the reload applied while nobody read")
        # The supervisor reads again: the pets resume, and the stop is said and clean.
        assert len(notify.drain(1.0)) > 10
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(5) == 0, "the stop waited on the supervisor"
        notify.wait_for("STOPPING=1", timeout=2)
        assert (rundir / "stopped").read_text() == "yes"
        out = proc.stdout.read().decode() if proc.stdout else ""
        assert out.count("reads its notify socket late") == 1, out  # said once, not at every refused pet
    finally:
        proc.kill()


def test_sighup_applies_what_changed(rundir: Path, notify: NotifySocket) -> None:
    config = _config(rundir)
    proc = _start(rundir, notify, config)
    try:
        notify.wait_for("READY=1")
        proc.send_signal(signal.SIGHUP)  # unchanged: nothing to apply
        _config(rundir, target="ja")
        proc.send_signal(signal.SIGHUP)
        applied = wait_until(lambda: (rundir / "applied").exists() and (rundir / "applied").read_text(), 5)
        assert applied == "languages target=ja\n"
        # A broken file on reload is refused; the service keeps running on the old config.
        config.write_text("[languages]\ntarget = 'klingon'\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=10)[0].decode()
        assert "config reload refused" in out and "klingon" in out
    finally:
        proc.kill()


def test_a_failed_start_exits_non_zero_without_ready(rundir: Path, notify: NotifySocket) -> None:
    (rundir / "refuse").touch()
    proc = _start(rundir, notify, _config(rundir))
    out = proc.communicate(timeout=10)[0].decode()
    assert proc.returncode == 1
    assert "device missing on purpose" in out
    assert not any("READY=1" in m for m in notify.drain(0.3))


def test_an_invalid_config_exits_2_naming_the_key(rundir: Path, notify: NotifySocket) -> None:
    config = rundir / "bad.toml"
    config.write_text('[audio]\nperiod_ms = 500\n')
    proc = _start(rundir, notify, config)
    out = proc.communicate(timeout=10)[0].decode()
    assert proc.returncode == 2 and "audio.period_ms = 500" in out


def test_the_player_loads_no_numpy_until_a_conversion_needs_it() -> None:
    """A box whose speaker takes tolk's own format keeps NumPy and soxr out of the playback process
    (their pages are ~7 MB of a small box): they load with the first conversion, not before."""
    code = (
        "import sys, services.playback.service as p\n"
        "from daemon.audio_format import Converter, DeviceFormat\n"
        "assert 'numpy' not in sys.modules and 'soxr' not in sys.modules, 'loaded at import'\n"
        "same = Converter(DeviceFormat(24000, 1), DeviceFormat(24000, 1))\n"
        "assert same.convert(b'\\x01\\x00' * 10) == b'\\x01\\x00' * 10 and 'numpy' not in sys.modules\n"
        "out = Converter(DeviceFormat(24000, 1), DeviceFormat(48000, 2)).convert(b'\\x00\\x10' * 2400)\n"
        "assert 'soxr' in sys.modules and len(out) > 0\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
