"""
Write the demo's kongacme configuration: etc/kongacme.example.yaml (which
documents every field) with the settings that point it at the local Pebble.

Usage: python3 scripts/demo_config.py OUT.yaml --ca-bundle FILE

Relative paths in the written file are resolved against its directory, as
kongacme does for every config file.
"""

from __future__ import annotations

import argparse
import os

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
EXAMPLE = os.path.join(HERE, "..", "etc", "kongacme.example.yaml")

HEADER = """\
# Written by scripts/demo (scripts/demo_config.py) on every start, from
# etc/kongacme.example.yaml -- read that file for what each field means.
# Edit this copy and `kill -HUP $(cat .demo/twistd.pid)` to try a change
# while the demo runs; the next scripts/demo run writes it afresh.
#
# ACME CA: a local Pebble (https://127.0.0.1:14000/dir) that validates
# http-01 on 127.0.0.1:8080 (this daemon's HTTP listener), resolving every
# name to 127.0.0.1 through the demo DNS stub.

"""


def demo_config(ca_bundle: str) -> dict:
    with open(EXAMPLE, encoding="utf-8") as f:
        config = yaml.safe_load(f)
    config["listen"] = {
        "tls": ["tcp:8443:interface=127.0.0.1"],
        "http": ["tcp:8080:interface=127.0.0.1"],
        "admin": ["tcp:8001:interface=127.0.0.1"],
    }
    config["state_dir"] = "state"
    config["default_upstream"] = "127.0.0.1:8000"
    # The demo upstream (scripts/demo_upstream.py) speaks HTTP/1.1 only: a
    # client that negotiated h2 with kongacme would send it HTTP/2 frames.
    for route in config.get("routes") or []:
        route["alpn"] = ["http/1.1"]
    config.setdefault("http", {})["https_port"] = 8443
    issuance = config.setdefault("issuance", {})
    issuance.update(
        {
            # Trust Pebble's HTTPS (its listener certificate comes from a CA
            # made by scripts/demo_pebble.py).
            "ca_bundle": ca_bundle,
            # Hold a new name's first handshake until its certificate exists.
            "first_handshake": "wait",
            # Pebble validates http-01 on 8080 here, not 80.
            "challenge_port": 8080,
        }
    )
    acme = config.setdefault("acme", {})
    acme.update(
        {
            "api_uri": "https://127.0.0.1:14000/dir",
            "tos_accepted": True,
            "domains": ["demo.test", "*.demo.test"],
            "cert_type": "ecc",
            # Files under state_dir: account and certificates survive restarts.
            "storage": "kong",
        }
    )
    return config


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
