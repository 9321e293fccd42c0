"""
Tests for the admin section of kongacme.config.daemon: its limits, and the
refusal of an Admin API reachable from other machines without a token.
"""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from kongacme.config import load_config
from kongacme.config.daemon import AdminConfig
from kongacme.config.hosts import is_loopback, listener_exposure
from kongacme.config.load import parse_config
from kongacme.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXPOSED = [
    ("tcp:8001", "listens on every interface"),
    ("tcp:8001:interface=0.0.0.0", "listens on every interface"),
    ("tcp6:8001", "listens on every interface"),
    ("tcp6:8001:interface=\\:\\:", "listens on every interface"),
    ("tcp:8001:interface=192.0.2.7", "listens on 192.0.2.7, not a loopback address"),
    ("tcp:8001:interface=admin.internal", "listens on admin.internal, which may not be a loopback address"),
    ("ssl:8444:privateKey=/k.pem", "listens on every interface"),
    ("systemd:domain=INET:index=0", "is a socket systemd passes in, which may listen on any address"),
]
LOCAL = [
    "tcp:8001:interface=127.0.0.1",
    "tcp:8001:interface=127.0.0.2",
    "tcp:8001:interface=localhost",
    "tcp6:8001:interface=\\:\\:1",
    "tcp6:8001:interface=\\:\\:ffff\\:127.0.0.1",
    "ssl:8444:interface=127.0.0.1:privateKey=/k.pem",
    "unix:/run/kongacme-admin.sock",
    "unix:address=/run/kongacme-admin.sock:mode=600",
]


def message(index: int, description: str, where: str) -> str:
    return (
        f"required: listen.admin[{index}] ({description}) {where}; set admin.token, listen on 127.0.0.1 or a "
        "unix: socket, or set admin.allow_unauthenticated: true to serve it without one"
    )


class ListenerExposureTests(SynchronousTestCase):
    """
    Tests for kongacme.config.hosts.listener_exposure and is_loopback.
    """

    def test_exposed(self) -> None:
        """
        tcp without an interface, the unspecified addresses, other
        addresses and names, and systemd sockets are exposed, each saying
        how.
        """
        for description, where in EXPOSED:
            self.assertEqual(listener_exposure(description), where, description)

    def test_local(self) -> None:
        """
        Loopback addresses (IPv4, IPv6, IPv4-mapped, localhost) and unix
        sockets are local.
        """
        for description in LOCAL:
            self.assertIsNone(listener_exposure(description), description)

    def test_is_loopback(self) -> None:
        """
        is_loopback takes addresses and the name localhost.
        """
        for host in ("127.0.0.1", "::1", "[::1]", "LocalHost.", "::ffff:127.0.0.1"):
            self.assertTrue(is_loopback(host), host)
        for host in ("0.0.0.0", "::", "10.0.0.1", "example.com", ""):
            self.assertFalse(is_loopback(host), host)


class AdminSectionTests(SynchronousTestCase):
    """
    Tests for the admin section and its check against listen.admin.
    """

    def test_defaults(self) -> None:
        """
        By default: no token, not allowed unauthenticated, 8 KiB heads and
        30 s to send a request; the default listener is loopback, so this
        is valid.
        """
        config = parse_config({}, "/srv")
        self.assertEqual(config.admin, AdminConfig(None, False, 8192, 30.0))

    def test_values_and_problems(self) -> None:
        """
        The limits are read and range-checked, naming their fields.
        """
        config = parse_config(
            {"admin": {"max_header_bytes": 2048, "request_timeout": 0.5, "metrics_host_limit": 0}}, "/srv"
        )
        self.assertEqual(
            (config.admin.max_header_bytes, config.admin.request_timeout, config.admin.metrics_host_limit),
            (2048, 0.5, 0),
        )
        self.assertEqual(parse_config({}, "/srv").admin.metrics_host_limit, 10_000)
        error = self.assertRaises(
            ConfigError, parse_config,
            {"admin": {"max_header_bytes": 10, "request_timeout": 0, "allow_unauthenticated": "yes",
                       "metrics_host_limit": -1}}, "/srv",
        )
        self.assertEqual(
            [path for path, _ in error.problems],
            ["admin.allow_unauthenticated", "admin.max_header_bytes", "admin.request_timeout",
             "admin.metrics_host_limit"],
        )

    def test_exposed_without_token_refused(self) -> None:
        """
        An exposed Admin listener without admin.token is a problem of
        admin.token that says which listener, why, and the ways out; the
        first exposed listener is named.
        """
        for description, where in EXPOSED:
            if description.startswith("ssl:"):
                continue  # its key file would have to exist
            data = {"listen": {"admin": ["unix:/run/a.sock", description, "tcp:1"]}}
            error = self.assertRaises(ConfigError, parse_config, data, "/srv")
            self.assertEqual(error.problems, [("admin.token", message(1, description, where))], description)

    def test_exposed_allowed(self) -> None:
        """
        A token, or admin.allow_unauthenticated: true, makes an exposed
        Admin listener valid.
        """
        for admin in ({"token": "s3cret"}, {"allow_unauthenticated": True}):
            config = parse_config({"listen": {"admin": "tcp:8001"}, "admin": admin}, "/srv")
            self.assertEqual(config.listen.admin, ("tcp:8001",))

    def test_local_without_token(self) -> None:
        """
        Loopback and unix Admin listeners need no token; no Admin listener
        at all needs none either.
        """
        local = [description for description in LOCAL if not description.startswith("ssl:")]
        config = parse_config({"listen": {"admin": local}}, "/srv")
        self.assertEqual(config.listen.admin, tuple(local))
        config = parse_config({"listen": {"admin": []}}, "/srv")
        self.assertEqual(config.listen.admin, ())

    def test_shipped_configs_valid(self) -> None:
        """
        The example and socket-activation configurations keep loading.
        """
        for name in ("kongacme.example.yaml", "kongacme-socket-activated.yaml"):
            config = load_config(os.path.join(REPO, "etc", name))
            self.assertEqual(config.admin.token, None, name)
