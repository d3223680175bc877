"""``tolk status``: ask the running control process for /api/status and print a compact table.

Uses only the standard library (urllib): it must work on a box whose services are failing.
"""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from typing import Any, TextIO

from daemon import config as config_mod
from services.control.http_server import loopback_for, split_listen

TIMEOUT_S = 3.0
STATUS_WIDTH = 58


def status_url(listen: str) -> str:
    host, port = split_listen(listen)
    host = loopback_for(host)
    return f"http://[{host}]:{port}/api/status" if ":" in host else f"http://{host}:{port}/api/status"


def fetch(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
        data = json.loads(resp.read())
    if not isinstance(data, dict):
        raise ValueError("the answer is not a JSON object")
    return data


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _age(age: float | None) -> str:
    return "never" if age is None else f"{age:.1f} s ago"


def format_status(data: dict[str, Any], url: str) -> str:
    lines: list[str] = []
    health = data.get("health", {})
    verdict = "OK" if health.get("ok") else "NOT OK"
    cfg = data.get("config", {})
    lines.append(
        f"tolk {verdict}  ({url})  {cfg.get('source', '?')} → {cfg.get('target', '?')}, "
        f"{'+'.join(cfg.get('modalities') or [])}, voice {cfg.get('voice') or '-'}"
    )
    for reason in health.get("reasons", []):
        lines.append(f"  ! {reason}")
    lines.append("")
    lines.append(f"{'PROCESS':<9} {'':<4} {'STATE':<9} {'PID':>7}  {'HEARTBEAT':<12} STATUS")
    for proc in data.get("processes", {}).values():
        pid = proc.get("pid") or "-"
        up = "up" if proc.get("up") else "DOWN"
        status = _cut(proc.get("status", ""), STATUS_WIDTH)
        lines.append(
            f"{proc.get('name', '?'):<9} {up:<4} {proc.get('reported_state', '?'):<9} "
            f"{pid:>7}  {_age(proc.get('age_s')):<12} {status}"
        )
    lines.append("")
    session = data.get("session")
    if session and session.get("state") != "unknown":
        extra = session.get("last_error") or session.get("detail") or ""
        lines.append(
            f"session: {session.get('state')} for {session.get('for_s', 0):.0f} s, "
            f"{session.get('reconnects', 0)} reconnects" + (f" — {_cut(extra, 80)}" if extra else "")
        )
    else:
        lines.append("session: no state reported")
    if usage := data.get("usage"):
        tokens_in = f"{usage.get('input_audio_tokens', 0)} audio + ~{usage.get('image_tokens_estimate', 0)} image"
        tokens_out = f"{usage.get('output_text_tokens', 0)} text + {usage.get('output_audio_tokens', 0)} audio"
        lines.append(
            f"usage:   {usage.get('audio_seconds_sent', 0):.0f} s audio sent; tokens in {tokens_in}, out {tokens_out}"
        )
    if (echo := data.get("echo")) and echo.get("cancelling"):
        erle = echo.get("erle_db")
        lines.append(
            f"echo:    cancelled, ERLE {'not measured yet' if erle is None else f'{erle:g} dB'}; the box spoke "
            f"{echo.get('far_s', 0):.0f} s, someone over it {echo.get('double_talk_s', 0):.0f} s"
        )
    elif echo and cfg.get("echo") == "aec":
        lines.append("echo:    NOT cancelled (the canceller could not start: half duplex; see capture's status)")
    captions = data.get("captions", [])
    if captions:
        lines.append("captions:")
        for cap in captions:
            source = cap.get("source") or {}
            translation = cap.get("translation") or {}
            mark = "final" if translation.get("final") else "…"
            lines.append(f"  [{mark:<5}] {_cut(source.get('text', ''), 40)} → {_cut(translation.get('text', ''), 60)}")
    return "\n".join(lines) + "\n"


def main(config_path: str | None, as_json: bool = False, out: TextIO = sys.stdout) -> int:
    try:
        cfg = config_mod.load(config_path)
    except config_mod.ConfigError as exc:
        print(f"tolk status: invalid config ({exc.source}): {'; '.join(exc.problems)}", file=sys.stderr)
        return 2
    url = status_url(cfg.control.listen)
    try:
        data = fetch(url)
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"tolk status: control is not reachable at {url}: {reason}", file=sys.stderr)
        return 1
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False), file=out)
    else:
        print(format_status(data, url), end="", file=out)
    return 0
