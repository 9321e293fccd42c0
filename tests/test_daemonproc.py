"""
Tests for tests.daemonproc: a failing test that ran a daemon reports the
daemon's output; ports handed out stay reserved; a daemon counts as started
only once it listens itself.
"""

import io
import os
import socket
import ssl

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory, Protocol
from twisted.trial.reporter import Reporter
from twisted.trial.unittest import SynchronousTestCase, TestCase

from tests import tlsclients
from tests.daemonproc import Daemon, ShowsDaemonOutput, _Collector, free_port


def _daemon_with_output(directory: str, output: bytes) -> Daemon:
    """A Daemon whose process already wrote ``output`` (none is started)."""
    daemon = Daemon(directory, {})
    daemon.collector = _Collector()
    daemon.collector.output = output
    return daemon


class ShowsDaemonOutputTests(SynchronousTestCase):
    """
    Tests for ShowsDaemonOutput.
    """

    def run_inner(self, method: str) -> tuple[Reporter, str]:
        class Inner(ShowsDaemonOutput, SynchronousTestCase):
            def test_fails(self):
                _daemon_with_output("/d1", b"daemon said: it was the ticket keys\n")
                self.fail("client saw UNEXPECTED_MESSAGE")

            def test_errs(self):
                _daemon_with_output("/d2", b"Traceback: boom\n")
                raise RuntimeError("client crashed")

            def test_passes(self):
                _daemon_with_output("/d3", b"all fine\n")

        stream = io.StringIO()
        result = Reporter(stream)
        Inner(method).run(result)
        result.done()
        return result, stream.getvalue()

    def test_failure_shows_output(self):
        """A failed assertion's report has its message, then the daemon's output."""
        result, text = self.run_inner("test_fails")
        self.assertEqual(len(result.failures), 1)
        self.assertIn("client saw UNEXPECTED_MESSAGE", text)
        self.assertIn("--- output of the daemon in /d1 ---\ndaemon said: it was the ticket keys", text)
        self.assertLess(text.index("UNEXPECTED_MESSAGE"), text.index("daemon said"))

    def test_error_shows_output(self):
        """An error keeps its exception type in the report and adds the daemon's output."""
        result, text = self.run_inner("test_errs")
        self.assertEqual(len(result.errors), 1)
        self.assertIn("builtins.RuntimeError: client crashed", text)
        self.assertIn("Traceback: boom", text)

    def test_success_shows_nothing(self):
        """A passing test prints no daemon output."""
        result, text = self.run_inner("test_passes")
        self.assertTrue(result.wasSuccessful())
        self.assertNotIn("all fine", text)


class Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class FreePortTests(ShowsDaemonOutput, TestCase):
    """
    Tests for free_port and Daemon.start when a port is taken.
    """

    timeout = 60

    def test_reserved(self):
        """
        A port handed out is given to no bind to port 0 afterwards (with or
        without SO_REUSEADDR), yet a listener can still take it explicitly.
        """
        port = free_port()
        with socket.socket() as s:
            # Held: a bind without SO_REUSEADDR is refused.
            self.assertRaises(OSError, s.bind, ("127.0.0.1", port))
        for i in range(1000):
            with socket.socket() as s:
                if i % 2:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", 0))
                self.assertNotEqual(s.getsockname()[1], port)
        listening = reactor.listenTCP(port, Factory.forProtocol(Echo), interface="127.0.0.1")
        return listening.stopListening()

    @inlineCallbacks
    def test_port_taken_by_another_process(self):
        """
        When another server already listens on the daemon's TLS port (here
        an echo server, as the test upstream of test_daemon_acme once did),
        Daemon.start fails with the daemon's reason instead of returning as
        soon as something accepts there; a TLS client sent to that port
        would have failed with UNEXPECTED_MESSAGE (its own ClientHello echoed).
        """
        port = free_port()
        echo = reactor.listenTCP(port, Factory.forProtocol(Echo), interface="127.0.0.1")
        self.addCleanup(echo.stopListening)
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        daemon = Daemon(
            directory,
            {
                "listen": {"tls": ["tcp:%d:interface=127.0.0.1" % port], "http": [], "admin": []},
                "state_dir": os.path.join(directory, "state"),
            },
        )
        self.addCleanup(daemon.stop)
        error = yield self.assertFailure(daemon.start(port), RuntimeError)
        self.assertIn("Address already in use", str(error))
        failure = yield self.assertFailure(
            tlsclients.handshake(port, "www.example.test", tlsclients.client_context(), payload=b""), ssl.SSLError
        )
        self.assertIn("UNEXPECTED_MESSAGE", str(failure))
