"""
The configuration of one node in the fleet tests (tests.test_fleet_daemons,
tests.test_fleet_outage): listeners on the given ports, an upstream, Pebble
as the CA, names under ``*.fleet.test`` and the shared storage.
"""

import os


def node_config(directory, ports, upstream_port, pebble, storage, issuance=None, fleet=None):
    """
    :param ports: ``(tls, http, admin)``; http ``None``: no plain-HTTP
        listener.
    :param storage: the ``acme`` fields pointing at the shared store.
    :param issuance: ``issuance`` settings beyond the CA's trust and timeouts.
    :param fleet: the ``fleet`` section.
    """
    tls, http, admin = ports
    return {
        "listen": {
            "tls": ["tcp:%d:interface=127.0.0.1" % tls],
            "http": ["tcp:%d:interface=127.0.0.1" % http] if http is not None else [],
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


def redis_storage(redis):
    """The ``acme`` fields for a shared real Redis (tests.redisfixture)."""
    return {"storage": "redis", "storage_config": {"redis": redis.storage_config()}}


def vault_storage(bao, prefix):
    """The ``acme`` fields for a shared real OpenBao, under a fresh KV folder."""
    from tests.baofixture import unique

    config = {"host": bao.host, "port": bao.port, "token": bao.token, "kv_path": "secret/" + unique(prefix)}
    return {"storage": "vault", "storage_config": {"vault": config}}


def write_root(pebble, directory):
    """
    Pebble's root (``/roots/0``) as a PEM file in ``directory``, the trust
    anchor of verified handshakes.

    :return: ``Deferred`` firing with its path.
    """
    from cryptography.hazmat.primitives import serialization

    def write(roots):
        path = os.path.join(directory, "root.pem")
        with open(path, "wb") as f:
            f.write(roots[0].public_bytes(serialization.Encoding.PEM))
        return path

    return pebble.roots().addCallback(write)


async def start_nodes(test_case, directory, ports, upstream_port, pebble, storage, extra=None, **settings):
    """
    Start one daemon process per entry of ``ports`` (``{name: (tls, http,
    admin)}``), each in ``directory/<name>``, stopped by the test's cleanups.

    :param extra: merged into each node's configuration.
    :param settings: ``issuance`` / ``fleet`` for :func:`node_config`.
    :return: ``{name: (daemon, tls_port)}``.
    """
    from tests.daemonproc import Daemon

    nodes = {}
    for name, node_ports in ports.items():
        node_directory = os.path.join(directory, name)
        os.makedirs(node_directory)
        config = node_config(node_directory, node_ports, upstream_port, pebble, storage, **settings)
        daemon = Daemon(node_directory, dict(config, **(extra or {})))
        test_case.addCleanup(daemon.stop)
        await daemon.start(node_ports[0])
        nodes[name] = (daemon, node_ports[0])
    return nodes
