"""
Port checks for scripts/demo.

    python3 scripts/demo_ports.py free "kongacme TLS=tcp:8443" "DNS stub=udp:8053" ...
        Exit 1, naming each busy port (and who holds it, when `ss` can
        tell), if any of them cannot be bound on 127.0.0.1.

    python3 scripts/demo_ports.py wait PORT [--pid PID] [--timeout SECONDS]
        Wait until something accepts TCP connections on 127.0.0.1:PORT;
        exit 1 on timeout or if process PID exits first.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time


def _bindable(proto: str, port: int) -> bool:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        # Twisted listens with SO_REUSEADDR too: connections of a previous
        # run in TIME_WAIT do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _holder(proto: str, port: int) -> str:
    if shutil.which("ss") is None:
        return ""
    flag = "-Hltnp" if proto == "tcp" else "-Hlunp"
    try:
        out = subprocess.run(
            ["ss", flag, "sport = :%d" % port], capture_output=True, text=True, timeout=5
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    users = [line.split("users:", 1)[1] for line in out.splitlines() if "users:" in line]
    return users[0] if users else ""


def free(args: argparse.Namespace) -> None:
    busy = []
    for spec in args.ports:
        what, _, where = spec.rpartition("=")
        proto, _, port = where.partition(":")
        if not _bindable(proto, int(port)):
            holder = _holder(proto, int(port))
            busy.append("  127.0.0.1:%s/%s (%s)%s" % (port, proto, what, ", held by " + holder if holder else ""))
    if busy:
        print("scripts/demo: these ports are in use:\n" + "\n".join(busy), file=sys.stderr)
        print("Stop whatever holds them and run scripts/demo again.", file=sys.stderr)
        sys.exit(1)


def alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def wait(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.timeout
    while time.monotonic() < deadline:
        if args.pid and not alive(args.pid):
            sys.exit("process %d exited before listening on 127.0.0.1:%d" % (args.pid, args.port))
        try:
            socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit("nothing listens on 127.0.0.1:%d after %ss" % (args.port, args.timeout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("free")
    p.add_argument("ports", nargs="+", help='"what=tcp:PORT" or "what=udp:PORT"')
    p.set_defaults(func=free)
    p = commands.add_parser("wait")
    p.add_argument("port", type=int)
    p.add_argument("--pid", type=int, default=0)
    p.add_argument("--timeout", type=float, default=15)
    p.set_defaults(func=wait)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
