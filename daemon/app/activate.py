"""``python -m daemon.app.activate FD COMMAND...``: run COMMAND with the listening socket FD handed
over as systemd's socket activation hands it (sd_listen_fds(3)): at descriptor 3, ``LISTEN_FDS=1``
and ``LISTEN_PID`` set to the process's own pid, which only the process itself can know (it keeps
its pid through the exec). ``tolk run`` starts the engine this way on its first connection.
"""

from __future__ import annotations

import os
import sys

from daemon.notify import LISTEN_FDS_START


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m daemon.app.activate FD COMMAND...", file=sys.stderr)
        return 2
    fd = int(argv[0])
    if fd != LISTEN_FDS_START:
        os.dup2(fd, LISTEN_FDS_START)
        os.close(fd)
    os.set_inheritable(LISTEN_FDS_START, True)
    os.environ.update(LISTEN_FDS="1", LISTEN_PID=str(os.getpid()))
    os.execvp(argv[1], argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
