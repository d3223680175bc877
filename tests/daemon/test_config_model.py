"""A process that reads configs (daemon/config_model.py) sees what the validator saw, field by field.

Each check runs in a child process of its own: building the config's classes on pydantic or on the
plain record is a choice a process makes once, before it first imports ``daemon.config``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon import config as config_mod
from daemon.bus import Bus
from daemon.messages import ConfigChanged
from tests.helpers import REPO, NotifySocket, running, service_env, tolk_cmd, wait_until

CASES = {
    "defaults": "",
    "shipped": (REPO / "config" / "tolk.toml").read_text(encoding="utf-8"),
    "conversation": (
        '[languages]\nsource = "de"\ntarget = "en"\nmode = "conversation"\ndirection_buttons = [17, 27]\n'
        '[output]\nmodalities = ["text", "audio"]\nvoice = "Cherry"\n'
        '[translation]\nphrases = { "Bahnhof" = "railway station" }\n'
    ),
    "paths and a workspace": (
        '[service]\nworkspace = "ws-1a2b"\nregion = "cn-beijing"\napi_key_file = "/etc/tolk/key"\n'
        'model = "qwen3.8-livetranslate-flash-realtime"\n[languages]\nsource = "auto"\ntarget = "nl"\n'
        '[engine]\nmarian_dir = "/opt/marian"\n[control]\nlisten = "0.0.0.0:8080"\ntoken_file = "/etc/tolk/token"\n'
        'visitor_languages = ["en", "ja"]\n'
    ),
    "fleet": '[mqtt]\nbroker = "mqtts://broker.example:8883"\nusername = "kiosk-1"\nbox_id = "hall-a"\n',
}

_READER = """
import json, sys
from daemon import config_model
config_model.read_only()
from daemon import config as config_mod
cfg = config_mod.load(sys.argv[1])
assert "pydantic" not in sys.modules, "pydantic loaded in a process that only reads configs"
types = {n: type(getattr(cfg, n)).__name__ for n in type(cfg).model_fields}
paths = [type(cfg.service.api_key_file).__name__, type(cfg.engine.marian_dir).__name__]
print(json.dumps({"dump": cfg.model_dump(mode="json"), "modalities": cfg.modalities, "voice": cfg.voice,
                  "profile": cfg.profile.name, "types": types, "paths": paths}))
"""


def _read_only_view(path: Path) -> dict[str, object]:
    run = subprocess.run([sys.executable, "-c", _READER, str(path)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 0, run.stderr
    return dict(json.loads(run.stdout))


@pytest.mark.parametrize("name", sorted(CASES))
def test_a_reading_process_sees_the_validated_config(tmp_path: Path, name: str) -> None:
    path = tmp_path / "tolk.toml"
    path.write_text(CASES[name], encoding="utf-8")
    validated = config_mod.load(path)
    seen = _read_only_view(path)
    assert seen["dump"] == validated.model_dump(mode="json")
    assert (seen["modalities"], seen["voice"], seen["profile"]) == (
        validated.modalities, validated.voice, validated.profile.name
    )
    assert seen["types"] == {n: type(getattr(validated, n)).__name__ for n in config_mod.Config.model_fields}
    assert seen["paths"] == [type(validated.service.api_key_file).__name__, type(validated.engine.marian_dir).__name__]


def test_a_bad_config_is_refused_in_a_reading_process_with_the_validators_words(tmp_path: Path) -> None:
    path = tmp_path / "tolk.toml"
    path.write_text('[audio]\nperiod_ms = 500\n[languages]\ntarget = "xx"\n', encoding="utf-8")
    with pytest.raises(config_mod.ConfigError) as validated:
        config_mod.load(path)
    code = (
        "import sys\nfrom daemon import config_model\nconfig_model.read_only()\nfrom daemon import config as c\n"
        "try:\n    c.load(sys.argv[1])\nexcept c.ConfigError as exc:\n    print(exc); sys.exit(3)\n"
    )
    run = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, cwd=REPO)
    assert run.returncode == 3, run.stderr
    assert run.stdout.strip() == str(validated.value)
    assert "audio.period_ms = 500" in run.stdout and "languages.target = 'xx'" in run.stdout


def test_read_only_must_come_before_the_config_is_built() -> None:
    code = "from daemon import config\nfrom daemon import config_model\nconfig_model.read_only()\n"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert run.returncode != 0 and "read_only() after daemon.config_sections" in run.stderr


def test_a_reading_process_takes_the_config_control_validated_for_the_same_files(
    rundir: Path, sd: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A change on the admin page costs the other processes no validation of their own: they take
    the config control sends with its ConfigChanged, when it was made from the files they read."""
    config = rundir / "tolk.toml"
    config.write_text('[audio]\nplayback_device = "absent_a"\n[log]\nlevel = "info"\n', encoding="utf-8")
    env = service_env(rundir, NOTIFY_SOCKET=sd.path)
    monkeypatch.setenv("TOLK_STATE_DIR", env["TOLK_STATE_DIR"])  # layers_named() names the overlay there
    log = rundir / "playback.log"
    control = Bus("control", rundir)

    def announce(device: str, files: str) -> None:
        cfg = config_mod.validate({"audio": {"playback_device": device}, "log": {"level": "info"}})
        control.publish(ConfigChanged(sections=["audio"], config=config_mod.validated_data(cfg), base=files))

    try:
        with running(tolk_cmd("service", "playback", "--config", str(config)), env, log):
            sd.wait_for("READY=1", timeout=30)
            # Not the file's device: the process took the config as sent (repeated: the slow joiner).
            ours = config_mod.layers_named(config)

            def taken() -> bool:
                announce("absent_b", ours)
                return "speaker now 'absent_b'" in log.read_text()

            wait_until(taken, 20, what="the sent config applied")
            # Made from other files: not taken; the process reads its own file, which says absent_a.
            for _ in range(3):
                announce("absent_c", "/elsewhere/tolk.toml + /elsewhere/config.toml")
            wait_until(lambda: "speaker now 'absent_a'" in log.read_text(), 30, what="its own file read")
            assert "absent_c" not in log.read_text()
    finally:
        control.close()
