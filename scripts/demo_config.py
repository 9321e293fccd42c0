"""
Write the demo's kongacme configuration: a local setup pointed at the
demo's Pebble, written from scratch (etc/kongacme.example.yaml is the
production template and documents every field; the demo does not read it).

Usage: python3 scripts/demo_config.py OUT.yaml --ca-bundle FILE

Relative paths in the written file (state_dir, ca_bundle) are resolved
against its directory, as kongacme does for every config file: with OUT in
.demo/, state lives in .demo/state.
"""

from __future__ import annotations

import argparse
import os

import yaml

HEADER = """\
# Written by scripts/demo (scripts/demo_config.py) on every start; what each
# field means is in etc/kongacme.example.yaml (the production template).
# Edit this copy and `kill -HUP $(cat .demo/twistd.pid)` to try a change
# while the demo runs; the next scripts/demo run writes it afresh.
#
# ACME CA: a local Pebble (https://127.0.0.1:14000/dir) that validates
# http-01 on 127.0.0.1:8080 (this daemon's HTTP listener), resolving every
# name to 127.0.0.1 through the demo DNS stub.

"""


def demo_config(ca_bundle: str) -> dict:
    """
    The demo's configuration.

    :param ca_bundle: the CA file that makes Pebble's HTTPS trusted
        (relative to the written file's directory, or absolute).
    """
    return {
        "listen": {
            "tls": ["tcp:8443:interface=127.0.0.1"],
            "http": ["tcp:8080:interface=127.0.0.1"],
            "admin": ["tcp:8001:interface=127.0.0.1"],
        },
        # Next to the written file: .demo/state (account key, certificates,
        # fallback certificate), kept across runs.
        "state_dir": "state",
        "routes": [
            {
                "hosts": ["demo.test", "*.demo.test"],
                "upstream": "127.0.0.1:8000",
                # The demo upstream (scripts/demo_upstream.py) speaks
                # HTTP/1.1 only: a client that negotiated h2 with kongacme
                # would send it HTTP/2 frames.
                "alpn": ["http/1.1"],
            }
        ],
        "default_upstream": "127.0.0.1:8000",
        "http": {"mode": "redirect", "https_port": 8443},
        "logging": {"level": "info", "format": "text", "file": "-"},
        "issuance": {
            # Trust Pebble's HTTPS (its listener certificate comes from a CA
            # made by scripts/demo_pebble.py).
            "ca_bundle": ca_bundle,
            # Hold a new name's first handshake until its certificate exists.
            "first_handshake": "wait",
            # Pebble validates http-01 on 8080 here, not 80.
            "challenge_port": 8080,
        },
        "acme": {
            "account_email": "admin@example.test",
            "api_uri": "https://127.0.0.1:14000/dir",
            "tos_accepted": True,
            "domains": ["demo.test", "*.demo.test"],
            "cert_type": "ecc",
            # Files under state_dir: account and certificates survive restarts.
            "storage": "kong",
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--ca-bundle", required=True, help="path, relative to OUT's directory or absolute")
    args = parser.parse_args()
    text = HEADER + yaml.safe_dump(demo_config(args.ca_bundle), sort_keys=False, default_flow_style=False)
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
