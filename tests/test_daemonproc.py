"""
Tests for tests.daemonproc: a failing test that ran a daemon reports the
daemon's output.
"""

import io

from twisted.trial.reporter import Reporter
from twisted.trial.unittest import SynchronousTestCase

from tests.daemonproc import Daemon, ShowsDaemonOutput, _Collector


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
