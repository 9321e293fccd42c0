"""
Tests for the Admin listener of a running daemon (twistd child process):
an exposed Admin API without a token is refused at start and on reload,
and the admin section's limits reach the listener.
"""

from __future__ import annotations

import json
import os
import socket
from typing import Any

from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import TestCase

from tests.daemonproc import Daemon, ShowsDaemonOutput, free_port
from tests.test_web_support import connect, exchange, parse_response

WAY_OUT = ("set admin.token, listen on 127.0.0.1 or a unix: socket, or set admin.allow_unauthenticated: true "
           "to serve it without one")


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


class AdminDaemonTests(ShowsDaemonOutput, TestCase):
    """
    Tests for the Admin listener in a daemon.

    :cvar workers: the daemon's ``workers`` (:class:`AdminDaemonWorkersTests` runs with 2).
    """

    timeout = 60
    workers = 1

    def make_daemon(self, admin_listen: str, admin: dict) -> Daemon:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        self.tls_port, self.http_port = free_port(), free_port()
        daemon = Daemon(
            directory,
            {
                "listen": {
                    "tls": ["tcp:%d:interface=127.0.0.1" % self.tls_port],
                    "http": ["tcp:%d:interface=127.0.0.1" % self.http_port],
                    "admin": [admin_listen],
                },
                "state_dir": os.path.join(directory, "state"),
                "admin": admin,
                "workers": self.workers,
            },
        )
        self.addCleanup(daemon.stop)
        return daemon

    @inlineCallbacks
    def test_exposed_without_token_refused_at_start(self) -> Any:
        """
        An Admin listener on every interface without admin.token: the
        daemon does not start, and says why and the way out; it never
        listened on the Admin port.
        """
        port = free_port()
        daemon = self.make_daemon("tcp:%d" % port, {})
        error = yield self.assertFailure(daemon.start(self.tls_port), RuntimeError)
        self.assertIn(
            "admin.token: required: listen.admin[0] (tcp:%d) listens on every interface; %s" % (port, WAY_OUT),
            str(error),
        )
        self.assertFalse(listening(port))

    @inlineCallbacks
    def test_exposed_without_token_refused_on_reload(self) -> Any:
        """
        A reload moving the Admin listener to every interface without a
        token is rejected with the reason, and the Admin API stays where it
        was; with admin.allow_unauthenticated: true the same reload is
        applied.
        """
        admin_port, exposed_port = free_port(), free_port()
        daemon = self.make_daemon("tcp:%d:interface=127.0.0.1" % admin_port, {})
        yield daemon.start(admin_port)
        daemon.config["listen"]["admin"] = ["tcp:%d:interface=0.0.0.0" % exposed_port]
        daemon.write()
        daemon.signal()
        yield daemon.wait_for("reload rejected")
        self.assertIn("admin.token: required: listen.admin[0] (tcp:%d:interface=0.0.0.0) listens on every interface"
                      % (exposed_port,), daemon.output)
        response = yield exchange(admin_port, b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertEqual(response.status, 200)
        self.assertFalse(listening(exposed_port))
        daemon.config["admin"] = {"allow_unauthenticated": True}
        daemon.write()
        daemon.signal()
        yield daemon.wait_for("configuration reloaded")
        response = yield exchange(exposed_port, b"GET /health HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        self.assertEqual(response.status, 200)

    @inlineCallbacks
    def test_limits_from_config(self) -> Any:
        """
        admin.token and admin.request_timeout reach the listener: a huge
        upload without the token is refused from its head, a trickling
        client is cut off.
        """
        admin_port = free_port()
        daemon = self.make_daemon("tcp:%d:interface=127.0.0.1" % admin_port,
                                  {"token": "s3cret", "request_timeout": 0.5})
        yield daemon.start(admin_port)
        response = yield exchange(admin_port, b"POST /acme HTTP/1.1\r\nHost: a\r\nContent-Length: 100000000000\r\n"
                                              b"Content-Type: application/json\r\n\r\n")
        self.assertEqual((response.status, json.loads(response.body)), (401, {"message": "Unauthorized"}))
        client = yield connect(admin_port)
        client.trickle(b"GET /health HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer s3cret\r\n" + b"X: y\r\n" * 50, 0.05)
        raw = yield client.closed
        self.assertEqual(parse_response(raw).status, 408)


class AdminDaemonWorkersTests(AdminDaemonTests):
    """
    Tests for the Admin listener with ``workers: 2``: the master alone
    serves it, refuses an exposed one at start and on reload, and applies
    its limits, with the workers running beside it.
    """

    workers = 2
