"""The ``tolk`` command."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from typing import TYPE_CHECKING

from daemon import config_model
from daemon.bus import OPTIONAL_PROCESSES, PROCESSES

if TYPE_CHECKING:
    from daemon.service import Service

#: The processes that validate configs themselves (control's HTTP API checks every PATCH); the
#: others read configs validated for them and never load pydantic (daemon/config_model.py).
VALIDATING = frozenset({"control"})


def load_service(name: str) -> type[Service]:
    """``services.<name>`` exposes ``SERVICE``, its Service class."""
    if name not in PROCESSES + OPTIONAL_PROCESSES:
        raise SystemExit(f"tolk: unknown service {name!r}; services are {', '.join(PROCESSES + OPTIONAL_PROCESSES)}")
    module = importlib.import_module(f"services.{name}")
    service: type[Service] = module.SERVICE
    return service


def _cmd_service(args: argparse.Namespace) -> int:
    if args.check:
        return _installed(args.name, args.config)
    if args.name not in VALIDATING:
        config_model.read_only()
    from daemon.service import run_service

    return run_service(load_service(args.name), args.config)


def _installed(name: str, config_path: str | None) -> int:
    """0 when the process has work here; else 1 and why (the units' ExecCondition=, so that a box
    installed without the engine, or without a camera or a broker, skips the unit instead of running it idle)."""
    from daemon import config as config_mod
    from daemon.backend import engine_installed

    if name == "engine" and not engine_installed():
        print("tolk: the local engine is not installed (the engine extra: pip install 'tolk[engine]')")
        return 1
    if name not in _CONFIGURED:
        return 0
    try:
        cfg = config_mod.load(config_path)
    except config_mod.ConfigError:
        return 0  # the service itself says what is wrong with the config, and fails
    why = _CONFIGURED[name](cfg)
    if why:
        print(f"tolk: {why}")
        return 1
    return 0


#: Processes that run only when the config gives them work: why not, or "" when it does.
_CONFIGURED = {
    "camera": lambda cfg: (
        'no camera ([camera] source = "none"): the camera process does not run' if cfg.camera.source == "none" else ""
    ),
    "mqtt": lambda cfg: (
        "no broker ([mqtt] broker is unset): the mqtt process does not run" if cfg.mqtt.broker is None else ""
    ),
}


def _cmd_run(args: argparse.Namespace) -> int:
    if args.demo:
        from daemon.app.demo import run_demo

        return run_demo(args)
    from daemon.app.supervisor import run_all

    return run_all(args.config, restart=not args.no_restart)


def _cmd_config_check(args: argparse.Namespace) -> int:
    from daemon import config as config_mod

    try:
        cfg = config_mod.load(args.config)
    except config_mod.ConfigError as exc:
        print(f"tolk: invalid config ({exc.source}):", file=sys.stderr)
        for problem in exc.problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    data = config_mod.public_dict(cfg)
    if args.json:
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        print(_as_toml(data), end="")
    print(f"# config OK ({config_mod.config_path(args.config) or 'embedded defaults'})", file=sys.stderr)
    return 0


def _as_toml(data: dict[str, object]) -> str:
    import tomlkit

    from daemon import config as config_mod

    doc = tomlkit.document()
    for section, values in data.items():
        table = tomlkit.table()
        fields = config_mod.Config.model_fields[section].annotation.model_fields  # type: ignore[union-attr]
        for key, value in dict(values).items():  # type: ignore[call-overload]
            if key not in fields:  # derived or masked values: shown, but not as settable keys
                table.add(tomlkit.comment(f"{key}: {json.dumps(value, ensure_ascii=False)}"))
            elif value is None:
                table.add(tomlkit.comment(f"{key} is unset"))
            else:
                table.add(key, value)
        doc.add(section, table)
    return tomlkit.dumps(doc)


def _cmd_status(args: argparse.Namespace) -> int:
    from services.control.status_cli import main as status_main

    return status_main(args.config, as_json=args.json)


def _cmd_devices(args: argparse.Namespace) -> int:
    from daemon.app.devices import main as devices_main

    return devices_main(as_json=args.json)


def _cmd_simulator(args: argparse.Namespace) -> int:
    from services.simulator import main as simulator_main

    return simulator_main(args)


def _cmd_install(args: argparse.Namespace) -> int:
    from daemon.app.install import main_install

    return main_install(args.root, args.api_key_file, args.entry_point, create_user=not args.no_user)


def _cmd_screen(args: argparse.Namespace) -> int:
    from daemon.app.screen import main as screen_main

    return screen_main(args.config, dry_run=args.dry_run)


def _cmd_uninstall(args: argparse.Namespace) -> int:
    from daemon.app.install import main_uninstall

    return main_uninstall(args.root, args.purge)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tolk", description="The tolk kiosk translation appliance.")
    sub = parser.add_subparsers(dest="command", required=True)

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--config", "-c", help="config file (default: $TOLK_CONFIG or /etc/tolk/tolk.toml)")
        return p

    run = with_config(sub.add_parser("run", help="run every process of the box (systemd does this on a device)"))
    run.add_argument("--no-restart", action="store_true", help="do not restart a process that dies")
    run.add_argument("--demo", action="store_true", help="no sound card, no account: WAV in, simulator, WAV out")
    run.add_argument("--wav", help="demo: the speech to translate (default: a sentence spoken by espeak-ng)")
    run.add_argument("--out", default="tolk-demo-out", help="demo: folder for the translated audio")
    run.add_argument("--simulator", action="store_true", help="demo: the protocol simulator, not the local engine")
    run.add_argument(
        "--source",
        help="demo: the language spoken (default: en, into pt, with the engine; another goes into en; "
        "the config's with the simulator)",
    )
    run.set_defaults(func=_cmd_run)

    svc = with_config(sub.add_parser("service", help="run one process (what each systemd unit calls)"))
    svc.add_argument("name", choices=PROCESSES + OPTIONAL_PROCESSES)
    svc.add_argument("--check", action="store_true", help="only say whether it can run here (exit 0 or 1)")
    svc.set_defaults(func=_cmd_service)

    cfg = sub.add_parser("config", help="config tools")
    cfg_sub = cfg.add_subparsers(dest="config_command", required=True)
    check = with_config(cfg_sub.add_parser("check", help="validate and print the merged config, key masked"))
    check.add_argument("--json", action="store_true", help="print JSON instead of TOML")
    check.set_defaults(func=_cmd_config_check)

    status = with_config(sub.add_parser("status", help="how the box is: processes, session, captions"))
    status.add_argument("--json", action="store_true", help="print the raw /api/status JSON")
    status.set_defaults(func=_cmd_status)

    inst = sub.add_parser("install", help="install the systemd units, the tolk user, config and API key (as root)")
    inst.add_argument("--root", default="/", help="install into this tree instead of / (an image, a test)")
    inst.add_argument("--api-key-file", metavar="FILE", help="the DashScope API key, from FILE or - for stdin")
    inst.add_argument("--entry-point", metavar="PATH", help="what /usr/local/bin/tolk links to (default: ours)")
    inst.add_argument("--no-user", action="store_true", help="do not create the tolk user")
    inst.set_defaults(func=_cmd_install)
    uninst = sub.add_parser("uninstall", help="stop and remove the units, the API key and the command link")
    uninst.add_argument("--root", default="/", help="uninstall from this tree instead of /")
    uninst.add_argument("--purge", action="store_true", help="also remove the config, the state and the tolk user")
    uninst.set_defaults(func=_cmd_uninstall)

    screen = with_config(sub.add_parser("screen", help="the captions page full screen on the display (kiosk)"))
    screen.add_argument("--dry-run", action="store_true", help="print the browser's command line, start nothing")
    screen.set_defaults(func=_cmd_screen)

    devices = sub.add_parser("devices", help="the ALSA capture and playback devices, by the names the config takes")
    devices.add_argument("--json", action="store_true", help="print JSON")
    devices.set_defaults(func=_cmd_devices)

    sim = sub.add_parser("simulator", help="a local stand-in for the realtime service (tests, demos)")
    sim.add_argument("--host", default="127.0.0.1")
    sim.add_argument("--port", type=int, default=8765)
    sim.add_argument("--record", help="write every client event received, one JSON per line, to this file")
    sim.add_argument("--voice", metavar="WAV", help="answer with stretches of this 24 kHz mono recording, not a tone")
    sim.add_argument(
        "--output-rate",
        type=int,
        choices=(8000, 16000, 24000, 48000),
        default=24000,
        help="qwen3.8: the speech's sample rate, as session.updated names it (default 24000)",
    )
    sim.set_defaults(func=_cmd_simulator)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
