"""``python -m daemon.config_validated [PATH]``: the merged config, validated, as JSON on stdout.

The validator of the processes that read configs without validating them (daemon/config_model.py):
``{"config": {...}}`` and exit 0, or ``{"source": ..., "problems": [...]}`` and exit 2.
"""

from __future__ import annotations

import json
import sys

from daemon import config as config_mod


def main(argv: list[str]) -> int:
    try:
        cfg = config_mod.load(argv[0] if argv else None)
    except config_mod.ConfigError as exc:
        print(json.dumps({"source": exc.source, "problems": exc.problems}))
        return 2
    print(json.dumps({"config": config_mod.validated_data(cfg)}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
