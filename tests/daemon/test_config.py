"""Config validation holds every rule of the service's tables, and errors say what would work."""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from daemon import config as cfgmod
from daemon import languages as lang
from tests.helpers import REPO, service_env, tolk_cmd

SEED_SOURCES = ["en", "zh", "ru", "fr", "de", "pt", "es", "it", "id"]
SEED_SOURCES += ["ko", "ja", "vi", "th", "ar", "yue", "hi", "el", "tr"]
SEED_AUDIO = ["en", "zh", "ru", "fr", "de", "pt", "es", "it", "ko", "ja", "yue"]
SEED_TEXT_ONLY = ["id", "vi", "th", "ar", "hi", "el", "tr"]
SEED_VOICES = {
    "Cherry": "zh en fr de ru it es pt ja ko",
    "Nofish": "zh en fr de ru it es pt ja ko",
    "Ethan": "zh en fr de ru it es pt ja ko",
    "Jada": "zh",
    "Dylan": "zh",
    "Sunny": "zh",
    "Peter": "zh",
    "Eric": "zh",
    "Kiki": "yue",
}


def _problems(data: dict) -> str:
    with pytest.raises(cfgmod.ConfigError) as info:
        cfgmod.validate(data)
    return " ".join(info.value.problems)


def test_tables_match_the_seed() -> None:
    assert sorted(lang.SOURCE_LANGUAGES) == sorted(SEED_SOURCES) and len(SEED_SOURCES) == 18
    assert sorted(lang.AUDIO_TARGETS) == sorted(SEED_AUDIO) and len(SEED_AUDIO) == 11
    assert sorted(lang.TEXT_ONLY_TARGETS) == sorted(SEED_TEXT_ONLY) and len(SEED_TEXT_ONLY) == 7
    assert {v: sorted(ls) for v, ls in lang.VOICES.items()} == {v: sorted(s.split()) for v, s in SEED_VOICES.items()}


@pytest.mark.parametrize("code", SEED_SOURCES)
def test_every_source_code_is_accepted(code: str) -> None:
    assert cfgmod.validate({"languages": {"source": code}}).languages.source == code


@pytest.mark.parametrize("code", ["xx", "EN", "zh-CN", "", "auto"])
def test_unknown_codes_are_refused_with_the_list(code: str) -> None:
    text = _problems({"languages": {"source": code}})
    assert "languages.source" in text and repr(code) in text and "yue" in text


def test_a_near_miss_gets_a_did_you_mean() -> None:
    assert "did you mean 'yue'" in _problems({"languages": {"target": "yeu"}})
    assert "did you mean 'target'" in _problems({"languages": {"targte": "en"}})
    assert "did you mean 'Cherry'" in _problems({"output": {"voice": "Chery"}})


@pytest.mark.parametrize("code", SEED_AUDIO)
def test_audio_targets_speak(code: str) -> None:
    cfg = cfgmod.validate({"languages": {"target": code}, "output": {"modalities": ["text", "audio"]}})
    assert cfg.modalities == ["text", "audio"]
    assert cfg.voice is not None and code in lang.VOICES[cfg.voice]


@pytest.mark.parametrize("code", SEED_TEXT_ONLY)
def test_text_only_targets_refuse_audio_and_say_why(code: str) -> None:
    text = _problems({"languages": {"target": code}, "output": {"modalities": ["text", "audio"]}})
    assert f"{code} ({lang.LANGUAGE_NAMES[code]}) is text-only" in text
    assert 'set modalities to ["text"]' in text


@pytest.mark.parametrize("code", SEED_TEXT_ONLY)
def test_text_only_targets_default_to_text_without_voice(code: str) -> None:
    cfg = cfgmod.validate({"languages": {"target": code}})
    assert cfg.modalities == ["text"] and cfg.voice is None


@pytest.mark.parametrize("voice", list(SEED_VOICES))
@pytest.mark.parametrize("target", SEED_AUDIO)
def test_each_voice_only_for_its_languages(voice: str, target: str) -> None:
    data = {"languages": {"target": target}, "output": {"voice": voice}}
    if target in SEED_VOICES[voice].split():
        assert cfgmod.validate(data).voice == voice
    else:
        text = _problems(data)
        assert f"output.voice = {voice!r} cannot speak {target}" in text
        for good in lang.voices_for(target):
            assert good in text


def test_a_voice_is_ignored_when_no_audio_is_produced() -> None:
    cfg = cfgmod.validate({"languages": {"target": "en"}, "output": {"voice": "Kiki", "modalities": ["text"]}})
    assert cfg.voice is None


@pytest.mark.parametrize("mods", [["audio"], [], ["text", "text"], ["video"]])
def test_bad_modalities(mods: list[str]) -> None:
    assert "output.modalities" in _problems({"output": {"modalities": mods}})


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"service": {"url": "https://example"}}, "service.url"),
        ({"service": {"url": "wss://h/p?model=x"}}, "service.url"),
        ({"audio": {"period_ms": 250}}, "audio.period_ms"),
        ({"camera": {"max_fps": 5}}, "camera.max_fps"),
        ({"camera": {"source": "webcam"}}, "camera.source"),
        ({"control": {"listen": "8080"}}, "control.listen"),
        ({"control": {"listen": "0.0.0.0:99999"}}, "control.listen"),
        ({"nonsense": {}}, "nonsense"),
        ({"engine": {"uncertain_speech": "loud"}}, "engine.uncertain_speech = 'loud': Input should be 'phrase' or"),
    ],
)
def test_other_keys_are_checked(data: dict, key: str) -> None:
    assert key in _problems(data)


def test_shipped_config_equals_the_embedded_defaults() -> None:
    shipped = cfgmod.validate(tomllib.loads((REPO / "config" / "tolk.toml").read_text()))
    assert shipped == cfgmod.Config()
    assert shipped.service.url == cfgmod.INTL_URL and shipped.service.model == "qwen3-livetranslate-flash-realtime"


def test_overlay_is_layered_over_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = tmp_path / "tolk.toml"
    base.write_text('[languages]\nsource = "de"\ntarget = "en"\n')
    state = tmp_path / "state"
    state.mkdir()
    (state / "config.toml").write_text('[languages]\ntarget = "ja"\n')
    monkeypatch.setenv("TOLK_STATE_DIR", str(state))
    cfg = cfgmod.load(base)
    assert (cfg.languages.source, cfg.languages.target) == ("de", "ja")


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(cfgmod.ConfigError, match="file not found"):
        cfgmod.load(tmp_path / "nope.toml")


def test_api_key_sources_and_masking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.delenv("DASHSCOPE_API_KEY", raising=False)
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    keyfile = tmp_path / "key"
    keyfile.write_text(secret + "\n")
    cfg = cfgmod.validate({"service": {"api_key_file": str(keyfile)}})
    assert cfgmod.api_key(cfg) == (secret, f"file {keyfile}")
    assert secret not in repr(cfgmod.public_dict(cfg)) and "cdef" not in repr(cfgmod.public_dict(cfg))
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "dashscope-api-key").write_text("from-credential")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert cfgmod.api_key(cfgmod.Config())[0] == "from-credential"
    monkeypatch.setenv("DASHSCOPE_API_KEY", "from-env")
    assert cfgmod.api_key(cfg) == ("from-env", "DASHSCOPE_API_KEY")


def _check(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = service_env(tmp_path, DASHSCOPE_API_KEY="sk-never-print-me-42")
    return subprocess.run(tolk_cmd("config", "check", "--config", str(path)), env=env, capture_output=True, text=True)


def test_config_check_passes_on_the_shipped_file(tmp_path: Path) -> None:
    result = _check(REPO / "config" / "tolk.toml", tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'target = "en"' in result.stdout and "sk-never-print-me-42" not in result.stdout + result.stderr
    assert "api_key" in result.stdout  # shown, masked


def test_config_check_names_the_broken_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.toml"
    broken.write_text('[languages]\ntarget = "th"\n[output]\nmodalities = ["text", "audio"]\n')
    result = _check(broken, tmp_path)
    assert result.returncode != 0
    assert "languages.target = 'th'" in result.stderr and "text-only" in result.stderr
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text("[languages\n")
    result = _check(bad_toml, tmp_path)
    assert result.returncode != 0 and "not valid TOML" in result.stderr


@pytest.mark.parametrize("url", ["ws://10.0.0.1/x", "ws://kiosk.example/realtime", "ws://127.0.0.1.example/x"])
def test_config_check_refuses_plain_ws_off_loopback(url: str, tmp_path: Path) -> None:
    path = tmp_path / "tolk.toml"
    path.write_text(f'[service]\nurl = "{url}"\n')
    result = _check(path, tmp_path)
    assert result.returncode != 0
    assert f"service.url = {url!r}" in result.stderr or repr(url) in result.stderr, result.stderr
    assert "clear text" in result.stderr and "wss://" in result.stderr


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8765/x", "ws://[::1]:8765/x", "ws://localhost:8765/x", "wss://h/p"])
def test_plain_ws_to_loopback_and_wss_anywhere_are_accepted(url: str) -> None:
    assert cfgmod.validate({"service": {"url": url}}).service.url == url


QWEN38 = "qwen3.8-livetranslate-flash-realtime"


def test_config_check_follows_the_chosen_models_tables(tmp_path: Path) -> None:
    def check(model: str, target: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / "tolk.toml"
        path.write_text(
            f'[service]\nmodel = "{model}"\n[languages]\ntarget = "{target}"\n'
            '[output]\nmodalities = ["text", "audio"]\n'
        )
        return _check(path, tmp_path)

    assert check(QWEN38, "nl").returncode == 0
    seed = check("qwen3-livetranslate-flash-realtime", "nl")
    assert seed.returncode != 0 and "languages.target = 'nl'" in seed.stderr
    assert "qwen3.5, qwen3.8" in seed.stderr and "[service] model" in seed.stderr, seed.stderr  # what would work
    cantonese = check(QWEN38, "yue")
    assert cantonese.returncode != 0 and "yue (Cantonese) is text-only on qwen3.8" in cantonese.stderr
    assert "speech on qwen3)" in cantonese.stderr and '["text"]' in cantonese.stderr, cantonese.stderr


def test_unknown_models_are_refused_with_the_known_ones() -> None:
    text = _problems({"service": {"model": "qwen3.9-livetranslate-flash-realtime"}})
    assert "service.model" in text and QWEN38 in text and "qwen3-omni-flash-realtime" in text
    assert cfgmod.validate({"service": {"model": QWEN38 + "-2026-09-19"}}).profile.label == "qwen3.8"
    assert "service.model" in _problems({"service": {"model": QWEN38 + "-latest"}})


def test_source_auto_where_the_model_detects_it() -> None:
    cfg = cfgmod.validate({"service": {"model": QWEN38}, "languages": {"source": "auto", "target": "sv"}})
    assert cfg.modalities == ["text", "audio"] and cfg.voice is None  # 3.8: the service's own voice
    qwen35 = cfgmod.validate(
        {"service": {"model": "qwen3.5-livetranslate-flash-realtime"}, "languages": {"source": "auto"}}
    )
    assert qwen35.voice == "Tina"
    both = _problems({"service": {"model": QWEN38}, "languages": {"source": "auto", "mode": "conversation"}})
    assert "both languages named" in both
    assert "qwen3.5, qwen3.8" in _problems({"languages": {"source": "auto"}})  # the seed must be told


def test_a_workspace_names_the_endpoint_unless_url_is_given() -> None:
    cfg = cfgmod.validate({"service": {"workspace": "ws-9f2k", "region": "cn-beijing"}})
    assert cfg.service.url == "wss://ws-9f2k.cn-beijing.maas.aliyuncs.com/api-ws/v1/realtime"
    explicit = cfgmod.validate({"service": {"workspace": "ws-9f2k", "url": "wss://proxy.example/rt"}})
    assert explicit.service.url == "wss://proxy.example/rt"
    assert "service.workspace" in _problems({"service": {"workspace": "ws/../evil"}})
