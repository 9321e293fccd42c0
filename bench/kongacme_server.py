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

``--promote-after N`` and ``--shared off`` set what a certificate's
connections are served on before it is busy (``PROMOTE_AFTER``,
``OWN_CERTIFICATES`` = 0), for measuring that path with h2load's one name:
``--promote-after 1000000`` keeps every connection on it, the own binding's
shared context from the second connection on; adding ``--shared off``,
pyOpenSSL's shared context, as before session 22. The daemon then runs in
this process (same PID) with the constants changed before it starts.
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
    p.add_argument("--promote-after", type=int, default=0, help="connections before a certificate is busy")
    p.add_argument("--shared", choices=("on", "off"), default="on",
                   help="off: no own-binding shared contexts (pyOpenSSL until busy)")
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
    if not (args.promote_after or args.shared == "off"):
        os.execve(argv[0], argv, env)
        return 1
    sys.path.insert(0, B.REPO)
    import kongacme.tls.context
    import kongacme.tls.stdlib

    if args.promote_after:
        kongacme.tls.context.PROMOTE_AFTER = args.promote_after
    if args.shared == "off":
        kongacme.tls.stdlib.OWN_CERTIFICATES = 0
    from twisted.scripts.twistd import run

    sys.argv = ["twistd", *argv[3:]]
    run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
