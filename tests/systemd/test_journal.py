"""Structured journal fields through libsystemd's real native protocol and a real JOURNAL_STREAM.

``journal_sink`` binds ``/run/systemd/journal/socket`` in a private mount namespace and reads what
``sd_journal_send`` writes there, field by field, as journald would store it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from services.simulator import Faults, running_in_thread
from tests.helpers import REPO, service_env, tolk_cmd, wait_until

KEY = "sk-journal-5d1e9b0c77"


def _namespaces_refused() -> str | None:
    try:
        result = subprocess.run(["unshare", "--mount", "true"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return None if result.returncode == 0 else result.stderr.strip() or f"exit {result.returncode}"


REFUSED = _namespaces_refused()
pytestmark = pytest.mark.skipif(REFUSED is not None, reason=f"the kernel refuses a private mount namespace: {REFUSED}")


class Journal:
    def __init__(self, rundir: Path, cmd: list[str], env: dict[str, str]) -> None:
        self.out = rundir / "journal.jsonl"
        self.out.touch()
        sink = [sys.executable, "-m", "tests.systemd.journal_sink", str(self.out), *cmd]
        self.proc = subprocess.Popen(["unshare", "--mount", *sink], env=env, cwd=REPO)

    def entries(self) -> list[dict[str, Any]]:
        lines = self.out.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def wait_for(self, needle: str, timeout: float = 15.0) -> dict[str, Any]:
        found = wait_until(
            lambda: next((e for e in self.entries() if needle in e.get("MESSAGE", "")), None), timeout, what=needle
        )
        assert isinstance(found, dict)
        return found

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(15)


def test_fields_reach_the_journal_as_fields(rundir: Path) -> None:
    config = rundir / "tolk.toml"
    config.write_text('[languages]\nsource = "zh"\ntarget = "en"\n')
    journal = Journal(rundir, [sys.executable, "-m", "tests.daemon.lifecycle_probe", str(config)], service_env(rundir))
    try:
        line = journal.wait_for("probe: utterance failed")
        ready = journal.wait_for("ready:")
    finally:
        assert journal.stop() == 0
    assert line["MESSAGE"] == "tolk.camera: probe: utterance failed"
    assert line["PRIORITY"] == "4" and line["SYSLOG_IDENTIFIER"] == "tolk-camera"
    assert line["TOLK_SERVICE"] == "camera" and line["LOGGER"] == "tolk.camera"
    assert line["TOLK_SESSION_ID"] == "probe-session-1"
    assert line["TOLK_UTTERANCE_ID"] == "utt-7" and line["TOLK_ERROR_CODE"] == "probe_error"
    # The session id is sticky; the others belonged to that one line.
    assert ready["TOLK_SESSION_ID"] == "probe-session-1" and ready["PRIORITY"] == "6"
    assert "TOLK_UTTERANCE_ID" not in ready and "TOLK_ERROR_CODE" not in ready
    # Under the journal our lines go only there, with no text suffix; the stream stays quiet.
    assert "[" not in line["MESSAGE"]
    assert not [e for e in journal.entries() if "tolk.camera" in e.get("_STREAM", "")]


def test_the_session_tags_its_lines_with_the_session_and_the_error_code(rundir: Path) -> None:
    faults = Faults(reject_update="Invalid modalities: ['audio'].", reject_code="invalid_value")
    with running_in_thread(faults=faults) as sim:
        config = rundir / "tolk.toml"
        config.write_text(f'[languages]\nsource = "zh"\ntarget = "en"\n[service]\nurl = "{sim.url}"\n')
        env = service_env(rundir, DASHSCOPE_API_KEY=KEY)
        journal = Journal(rundir, tolk_cmd("service", "session", "-c", str(config)), env)
        try:
            error = journal.wait_for("session failed: the service refused the configuration")
        finally:
            assert journal.stop() == 0
    assert error["TOLK_SERVICE"] == "session" and error["SYSLOG_IDENTIFIER"] == "tolk-session"
    assert error["TOLK_ERROR_CODE"] == "invalid_value"
    assert error["TOLK_SESSION_ID"].startswith("sess_"), error
    # Lines before the service named the session carry no id; the ones after do.
    connecting = journal.wait_for("session connecting")
    assert "TOLK_SESSION_ID" not in connecting and "TOLK_ERROR_CODE" not in connecting
    assert KEY not in json.dumps(journal.entries())


def test_plain_stderr_carries_the_same_fields_when_there_is_no_journal(rundir: Path) -> None:
    """An inherited JOURNAL_STREAM that is not our stderr does not count (systemd.exec(5))."""
    config = rundir / "tolk.toml"
    config.write_text('[languages]\nsource = "zh"\ntarget = "en"\n')
    env = service_env(rundir, JOURNAL_STREAM="1:2")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.daemon.lifecycle_probe", str(config)],
        env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        wait_until(lambda: (rundir / "opened").exists(), 10)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=10)[0].decode()
    finally:
        proc.kill()
    assert "probe: utterance failed [session_id=probe-session-1 utterance_id=utt-7 error_code=probe_error]" in out
    assert "ready: ready [session_id=probe-session-1]" in out
