"""
The configuration of one node in the fleet tests (tests.test_fleet_daemons,
tests.test_fleet_outage): listeners on the given ports, an upstream, Pebble
as the CA, names under ``*.fleet.test`` and the shared storage.
"""

import os


def node_config(directory, ports, upstream_port, pebble, storage, issuance=None, fleet=None):
    """
    :param ports: ``(tls, http, admin)``.
    :param storage: the ``acme`` fields pointing at the shared store.
    :param issuance: ``issuance`` settings beyond the CA's trust and timeouts.
    :param fleet: the ``fleet`` section.
    """
    tls, http, admin = ports
    return {
        "listen": {
            "tls": ["tcp:%d:interface=127.0.0.1" % tls],
            "http": ["tcp:%d:interface=127.0.0.1" % http],
            "admin": ["tcp:%d:interface=127.0.0.1" % admin],
        },
        "state_dir": os.path.join(directory, "state"),
        "default_upstream": "127.0.0.1:%d" % upstream_port,
        "acme": {
            "account_email": "ops@example.test",
            "api_uri": pebble.directory_url,
            "tos_accepted": True,
            "cert_type": "ecc",
            "domains": ["*.fleet.test"],
            **storage,
        },
        "issuance": {"ca_bundle": pebble.ca_bundle, "request_timeout": 5, "handshake_wait": 20, **(issuance or {})},
        "fleet": fleet or {"poll_interval": 0.5},
    }
