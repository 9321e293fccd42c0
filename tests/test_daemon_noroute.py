"""
A TLS client whose name has no route (and no default upstream), against a
real daemon: it gets a clean end of the connection, never a reset, even
when it sends a request right after its handshake.
"""

import os
import socket
import ssl
import time

from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import TestCase

from tests.daemonproc import Daemon, ShowsDaemonOutput, free_port


def request_after_handshake(port: int, rounds: int = 10) -> list:
    """Handshake, send a request at once, read to the end; what each round got."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    outcomes = []
    for _ in range(rounds):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="nowhere.test") as tls:
                try:
                    # A client still sending when the server gives up (a
                    # request body): the second part arrives after the
                    # server's close_notify.
                    tls.sendall(b"POST / HTTP/1.1\r\nHost: nowhere.test\r\nContent-Length: 40000\r\n\r\n")
                    time.sleep(0.05)
                    tls.sendall(b"x" * 40000)
                    time.sleep(0.05)
                    data = tls.recv(65536)
                    outcomes.append("eof" if data == b"" else "data")
                except (ConnectionResetError, BrokenPipeError, ssl.SSLError) as e:
                    outcomes.append(type(e).__name__)
    return outcomes


class NoRouteTests(ShowsDaemonOutput, TestCase):
    """
    Tests for a TLS client whose name has no route.

    :cvar workers: the daemon's ``workers`` (:class:`NoRouteWorkersTests` runs with 2).
    """

    timeout = 60
    workers = 1

    @inlineCallbacks
    def test_clean_end_without_reset(self):
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        port = free_port()
        daemon = Daemon(
            directory,
            {
                "listen": {"tls": ["tcp:%d:interface=127.0.0.1" % port], "http": [], "admin": []},
                "state_dir": os.path.join(directory, "state"),
                "workers": self.workers,
            },
        )
        self.addCleanup(daemon.stop)
        yield daemon.start(port)
        if self.workers > 1:
            yield daemon.wait_for("accepting:", count=self.workers)
        outcomes = yield deferToThread(request_after_handshake, port)
        self.assertEqual(set(outcomes), {"eof"}, outcomes)
        # Ten connections, one line each for the first five: the log's rate
        # limit (kongacme.logs) folds the rest into one line 10 s later.
        self.assertEqual(daemon.output.count("no route for nowhere.test"), 5)


class NoRouteWorkersTests(NoRouteTests):
    """
    Tests for a TLS client whose name has no route, served by one of two
    workers: the same clean end, and the workers' lines go through the
    master's rate-limited log.
    """

    workers = 2
