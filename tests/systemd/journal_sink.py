"""A stand-in for journald's two inputs, for one command (``python -m tests.systemd.journal_sink OUT CMD...``).

Run inside a private mount namespace (``unshare --mount``): it mounts a tmpfs over ``/run``, binds
the native-protocol datagram socket at ``/run/systemd/journal/socket`` (the path libsystemd's
``sd_journal_send`` always uses) and gives the command a stream socket as stdout/stderr with
``JOURNAL_STREAM`` naming it, as systemd does for ``StandardOutput=journal``. Every entry received
is written to OUT as one JSON object per line; stream lines as ``{"_STREAM": line}``. SIGTERM is
passed on to the command; the sink exits when the command has.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

JOURNAL_DIR = Path("/run/systemd/journal")


def parse_native(data: bytes) -> dict[str, str]:
    """journald's native protocol: ``KEY=VALUE\\n``, or ``KEY\\n`` + 64-bit LE length + bytes + ``\\n``."""
    fields: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        end = data.index(b"\n", pos)
        line = data[pos:end]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            pos = end + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, end + 1)
            start = end + 1 + 8
            value = data[start : start + size]
            pos = start + size + 1
        fields[key.decode()] = value.decode("utf-8", "replace")
    return fields


def main(out_path: str, cmd: list[str]) -> int:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=0755", "tmpfs", "/run"], check=True)
    JOURNAL_DIR.mkdir(parents=True)
    native = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    native.bind(str(JOURNAL_DIR / "socket"))
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    st = os.fstat(theirs.fileno())
    env = dict(os.environ, JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    child = subprocess.Popen(cmd, env=env, stdout=theirs, stderr=theirs, stdin=subprocess.DEVNULL)
    theirs.close()
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    pending = b""
    with open(out_path, "w", encoding="utf-8") as out:

        def write(entry: dict[str, str]) -> None:
            out.write(json.dumps(entry) + "\n")
            out.flush()

        stream_open = True
        while child.poll() is None or stream_open:
            ready, _, _ = select.select([native, ours] if stream_open else [native], [], [], 0.2)
            if native in ready:
                write(parse_native(native.recv(1 << 20)))
            if ours in ready:
                chunk = ours.recv(65536)
                if not chunk:
                    stream_open = False
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    write({"_STREAM": line.decode("utf-8", "replace")})
        native.setblocking(False)
        while True:
            try:
                write(parse_native(native.recv(1 << 20)))
            except BlockingIOError:
                break
    return child.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
