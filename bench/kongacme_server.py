#!/usr/bin/env python3
"""
kongacme from this tree as a ``pump.py --extra`` server, with settings the
main server does not have: ``--openssl-conf`` (an ``OPENSSL_CONF`` file,
e.g. ``etc/openssl/one-ticket.cnf``) and ``--session-tickets off``. Writes
the same configuration ``pump.py`` gives its own kongacme (one leaf, one
route to the upstream), then becomes the daemon (same PID: its CPU is
what ``pump.py`` reads).

    python3 bench/pump.py --measures handshakes \\
      --extra "one=.venv/bin/python bench/kongacme_server.py {port} {upstream} {cert} {key} --openssl-conf etc/openssl/one-ticket.cnf"
"""

from __future__ import annotations

import argparse
import os
import sys

import benchlib as B


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("port", type=int)
    p.add_argument("upstream", type=int)
    p.add_argument("cert")
    p.add_argument("key")
    p.add_argument("--openssl-conf", default="", help="OPENSSL_CONF for the daemon (relative to the tree)")
    p.add_argument("--session-tickets", choices=("on", "off"), default="on")
    p.add_argument("--host", default="bench.test")
    args = p.parse_args(argv)
    work = B.out_dir("extra-kongacme-%d" % args.port)
    leaf = {"cert": args.cert, "key": args.key}
    config = B.kongacme_config(
        work, args.port, [leaf],
        [{"hosts": [args.host], "upstream": "127.0.0.1:%d" % args.upstream, "alpn": ["http/1.1"]}],
        fallback=leaf, session_tickets=args.session_tickets == "on")
    env = B.kongacme_env()
    if args.openssl_conf:
        env["OPENSSL_CONF"] = os.path.join(B.REPO, args.openssl_conf)
    os.chdir(B.REPO)
    argv = B.kongacme_argv(config)
    os.execve(argv[0], argv, env)
    return 1


if __name__ == "__main__":
    sys.exit(main())
