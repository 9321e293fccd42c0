"""
A stand-in for the worker that tests/test_workers_zygote.py has the zygote
fork: it reports what it got over descriptor 3, writes a line to each of
standard output and error, then exits with the code it was given
(``exit N``) or waits until descriptor 3 closes (``wait``).
"""

from __future__ import annotations

import json
import os
import socket
import sys


def is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def main(args: list[str]) -> None:
    from kongacme.workers.worker import die_with_parent

    die_with_parent(int(args[args.index("--master-pid") + 1]))
    channel = socket.socket(fileno=3)
    report = {"pid": os.getpid(), "ppid": os.getppid(), "fds": [fd for fd in range(256) if is_open(fd)]}
    channel.sendall(json.dumps(report).encode("ascii") + b"\n")
    print("out from %d" % os.getpid(), flush=True)
    print("err from %d" % os.getpid(), file=sys.stderr, flush=True)
    if args[0] == "exit":
        raise SystemExit(int(args[1]))
    channel.recv(1)
