"""
Pebble (Let's Encrypt's test CA) for scripts/demo.

    python3 scripts/demo_pebble.py prepare DIR --http-port 8080
        Writes, in DIR: a CA for Pebble's own HTTPS (pebble-listener-ca.pem,
        kept across runs; kongacme's issuance.ca_bundle), Pebble's listener
        certificate for localhost and 127.0.0.1 (pebble-listener.crt/.key),
        and Pebble's JSON config (pebble.json).

    python3 scripts/demo_pebble.py fetch-root DIR --pid PID
        Waits until Pebble's ACME directory answers (giving up if process
        PID exits), then writes the root Pebble issues under
        (GET /roots/0 on the management API) to DIR/pebble-root.pem. Pebble
        makes a new root on every start; roots of earlier runs stay in the
        file after the new one, because certificates they issued are still
        in kongacme's storage (acme.storage: kong) and still served.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import ssl
import sys
import time
import urllib.request

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from kongacme.testing import TestCA

from demo_ports import alive  # scripts/ is on sys.path when run as a script

CA_FILE = "pebble-listener-ca.pem"
CERT_FILE = "pebble-listener.crt"
KEY_FILE = "pebble-listener.key"
CONFIG_FILE = "pebble.json"
ROOT_FILE = "pebble-root.pem"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def _listener_usable(directory: str) -> bool:
    """True if the CA and listener certificate exist and last another week."""
    try:
        with open(os.path.join(directory, CERT_FILE), "rb") as f:
            leaf = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(directory, CA_FILE), "rb") as f:
            x509.load_pem_x509_certificate(f.read())
        if not os.path.exists(os.path.join(directory, KEY_FILE)):
            return False
    except (OSError, ValueError):
        return False
    return leaf.not_valid_after_utc > _now() + datetime.timedelta(days=7)


def _make_listener(directory: str) -> None:
    ca = TestCA.create("kongacme demo: Pebble listener CA")
    listener = ca.issue(["localhost"], ips=["127.0.0.1"], days=365, include_ca=True)
    _write(os.path.join(directory, CA_FILE), ca.ca_pem())
    _write(os.path.join(directory, KEY_FILE), listener.key_pem(), 0o600)
    _write(os.path.join(directory, CERT_FILE), listener.chain_pem())


def prepare(args: argparse.Namespace) -> None:
    directory = os.path.abspath(args.dir)
    os.makedirs(directory, exist_ok=True)
    if not _listener_usable(directory):
        _make_listener(directory)
        print("made a CA and a listener certificate for Pebble's HTTPS in %s" % directory)
    config = {
        "pebble": {
            "listenAddress": "127.0.0.1:%d" % args.acme_port,
            "managementListenAddress": "127.0.0.1:%d" % args.management_port,
            "certificate": os.path.join(directory, CERT_FILE),
            "privateKey": os.path.join(directory, KEY_FILE),
            # Where Pebble validates http-01: kongacme's HTTP listener.
            "httpPort": args.http_port,
            # tls-alpn-01: kongacme answers http-01 only; nothing listens here.
            "tlsPort": args.tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": False,
        }
    }
    _write(os.path.join(directory, CONFIG_FILE), (json.dumps(config, indent=2) + "\n").encode())


def fetch_root(args: argparse.Namespace) -> None:
    directory = os.path.abspath(args.dir)
    context = ssl.create_default_context(cafile=os.path.join(directory, CA_FILE))
    base = "https://127.0.0.1:%d" % args.acme_port
    management = "https://127.0.0.1:%d" % args.management_port
    deadline = time.monotonic() + args.timeout
    last_error = "no answer"
    while True:
        if args.pid and not alive(args.pid):
            sys.exit("Pebble exited before its directory answered")
        try:
            with urllib.request.urlopen(base + "/dir", context=context, timeout=2) as response:
                json.load(response)
            break
        except Exception as e:  # not up yet
            last_error = str(e)
        if time.monotonic() > deadline:
            sys.exit("Pebble's directory %s/dir did not answer in %ds: %s" % (base, args.timeout, last_error))
        time.sleep(0.1)
    with urllib.request.urlopen(management + "/roots/0", context=context, timeout=10) as response:
        root = x509.load_pem_x509_certificate(response.read())
    path = os.path.join(directory, ROOT_FILE)
    roots = [root]
    try:
        with open(path, "rb") as f:
            roots += x509.load_pem_x509_certificates(f.read())
    except (OSError, ValueError):
        pass
    seen, unique = set(), []
    for cert in roots:
        digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).digest()
        if digest not in seen:
            seen.add(digest)
            unique.append(cert)
    _write(path, b"".join(c.public_bytes(serialization.Encoding.PEM) for c in unique))
    print("Pebble's issuing root: %s -> %s" % (root.subject.rfc4514_string(), path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    for name, func in (("prepare", prepare), ("fetch-root", fetch_root)):
        command = commands.add_parser(name)
        command.set_defaults(func=func)
        command.add_argument("dir")
        command.add_argument("--acme-port", type=int, default=14000)
        command.add_argument("--management-port", type=int, default=15000)
        if name == "prepare":
            command.add_argument("--http-port", type=int, default=8080)
            command.add_argument("--tls-port", type=int, default=5001)
        else:
            command.add_argument("--pid", type=int, default=0, help="Pebble's process id")
            command.add_argument("--timeout", type=float, default=20)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
