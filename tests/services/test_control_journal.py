"""The logs download: journalctl's lines for the tolk units, the key and the token scrubbed."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import config as config_mod
from services.control import journal

KEY = "sk-journal-scrub-test-44"
TOKEN = "tolk-ctl-journal-9a"


def _journalctl(folder: Path, script: str) -> None:
    folder.mkdir(exist_ok=True)
    tool = folder / "journalctl"
    tool.write_text("#!/bin/sh\n" + script)
    tool.chmod(0o755)


def test_the_download_holds_tolks_lines_and_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _journalctl(tmp_path / "bin", f'echo "$@" >&2\necho "tolk-session[1]: key {KEY} token {TOKEN}"\n')
    (tmp_path / "token").write_text(TOKEN)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    monkeypatch.setenv("DASHSCOPE_API_KEY", KEY)
    cfg = config_mod.validate({"control": {"token_file": str(tmp_path / "token")}})
    text = journal.last_hour(cfg)
    assert text.startswith("tolk-session[1]: key ") and KEY not in text and TOKEN not in text


def test_no_journal_is_said_and_an_empty_one_is_empty(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "none"))
    with pytest.raises(journal.JournalUnavailable, match="no journalctl"):
        journal.last_hour(config_mod.Config())
    _journalctl(tmp_path / "bin", 'echo "Failed to add filter for units: No data available" >&2\nexit 1\n')
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert journal.last_hour(config_mod.Config()) == ""
    _journalctl(tmp_path / "bin", 'echo "Permission denied" >&2\nexit 1\n')
    with pytest.raises(journal.JournalUnavailable, match="Permission denied"):
        journal.last_hour(config_mod.Config())
