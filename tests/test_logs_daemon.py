"""
Tests for the daemon's logs as operators read them (kongacme.logs wired by
kongacme.service): a real ``twistd -n kongacme`` process writing JSON lines
that jq reads, a log file reopened on SIGHUP after logrotate moved it,
hostile input rate-limited, and no factory noise from an order.
"""

import json
import os
import shutil

from twisted.internet.defer import gatherResults, inlineCallbacks
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from tests import tlsclients
from tests.daemonproc import REPO, Daemon, ShowsDaemonOutput, free_port, run_twistd
from tests.test_daemon_acme import AcmeDaemonMixin

GARBAGE = b"GET / HTTP/1.0\r\n\r\n" * 4


def garbage(port: int):
    """One connection that sends something that is not a ClientHello."""
    return deferToThread(tlsclients.raw_exchange_blocking, port, GARBAGE)


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


class LogDaemonMixin(ShowsDaemonOutput):
    """A daemon without ACME, TLS listener only, with the given logging section."""

    timeout = 60

    @inlineCallbacks
    def start(self, **logging):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.tls_port = free_port()
        self.daemon = Daemon(
            self.dir,
            {
                "listen": {"tls": ["tcp:%d:interface=127.0.0.1" % self.tls_port], "http": [], "admin": []},
                "state_dir": os.path.join(self.dir, "state"),
                "logging": dict({"level": "info"}, **logging),
            },
        )
        self.addCleanup(self.daemon.stop)
        yield self.daemon.start(self.tls_port)

    @inlineCallbacks
    def wait_in_file(self, path: str, text: str, count: int = 1, timeout: float = 20.0):
        """Wait until ``text`` appears ``count`` times in the file at ``path``."""
        for _ in range(int(timeout / 0.05)):
            if os.path.exists(path) and read(path).count(text) >= count:
                return
            yield deferLater(self._reactor(), 0.05, lambda: None)
        contents = read(path) if os.path.exists(path) else "(no file)"
        self.fail("%r not %d times in %s:\n%s\ndaemon output:\n%s" % (text, count, path, contents, self.daemon.output))

    @inlineCallbacks
    def start_logging_to_file(self, name: str = "kongacme.log"):
        """Start a daemon logging (text) to ``name`` in a folder of its own, once it has started: the path."""
        path = os.path.join(os.path.abspath(self.mktemp()) + "-logs", name)
        os.makedirs(os.path.dirname(path))
        yield self.start(file=path)
        yield self.wait_in_file(path, "started")
        return path

    @staticmethod
    def _reactor():
        from twisted.internet import reactor

        return reactor


class JsonLogTests(LogDaemonMixin, TestCase):
    """
    Tests for ``logging.format: json`` in a running daemon.
    """

    @inlineCallbacks
    def test_lines_parse_with_jq(self):
        """Every line is one flat JSON object (jq reads it) with time, level, logger and the rendered message."""
        jq = shutil.which("jq")
        yield self.start(format="json")
        yield garbage(self.tls_port)
        yield self.daemon.wait_for("dropping connection")
        yield self.daemon.stop()
        output = self.daemon.output
        lines = [line for line in output.splitlines() if line]
        self.assertTrue(lines)
        events = [json.loads(line) for line in lines]
        for event in events:
            self.assertTrue({"time", "level", "logger", "message"} <= set(event), event)
            self.assertIn(event["level"], ("debug", "info", "warn", "error", "critical"))
            self.assertRegex(event["time"], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
            self.assertFalse([key for key in event if key.startswith("log_")], event)
        dropped = [e for e in events if e["message"].startswith("TLS: dropping connection from 127.0.0.1:")]
        self.assertEqual(len(dropped), 1, output)
        self.assertEqual(dropped[0]["level"], "info")
        self.assertEqual(dropped[0]["logger"], "kongacme.tls.protocol")
        self.assertEqual(dropped[0]["peer"], dropped[0]["message"].split(" ")[4].rstrip(":"))
        if jq is None:
            raise SkipTest("jq is not installed: lines checked with the json module only")
        written = os.path.join(self.dir, "output.jsonl")
        with open(written, "w", encoding="utf-8") as f:
            f.write(output)
        out, err, code = yield tlsclients.run(jq, "-r", "[.level, .message] | @tsv", written)
        self.assertEqual(code, 0, err)
        self.assertEqual(len(out.decode().splitlines()), len(lines))
        self.assertIn(b"info\tTLS: dropping connection from 127.0.0.1:", out)


class LogFileTests(LogDaemonMixin, TestCase):
    """
    Tests for ``logging.file`` in a running daemon: reopened on SIGHUP.
    """

    @inlineCallbacks
    def test_rotation_and_sighup(self):
        """After the file is moved and SIGHUP sent, a new file is created and gets the lines from then on."""
        path = yield self.start_logging_to_file()
        rotated = path + ".1"
        os.rename(path, rotated)
        self.daemon.signal()
        yield self.wait_in_file(path, "configuration reloaded")
        yield garbage(self.tls_port)
        yield self.wait_in_file(path, "dropping connection")
        self.assertNotIn("dropping connection", read(rotated))
        self.assertNotIn("reloading configuration", read(rotated))
        self.assertIn("started", read(rotated))

    @inlineCallbacks
    def test_failed_reopen_keeps_old_file(self):
        """A SIGHUP whose reopen fails logs why in the old file and keeps writing there; the reload still happens."""
        path = yield self.start_logging_to_file()
        rotated = path + ".1"
        os.rename(path, rotated)
        os.mkdir(path)  # the path cannot be opened as a file
        self.daemon.signal()
        yield self.wait_in_file(rotated, "could not reopen the log file %s, still writing to the old one" % path)
        yield self.wait_in_file(rotated, "configuration reloaded")
        yield garbage(self.tls_port)
        yield self.wait_in_file(rotated, "dropping connection")

    @inlineCallbacks
    def test_reload_changes_logging(self):
        """A reload that changes the logging section takes effect: format json, in a new file."""
        first = yield self.start_logging_to_file("first.log")
        second = os.path.join(os.path.dirname(first), "second.log")
        self.daemon.config["logging"] = {"level": "info", "format": "json", "file": second}
        self.daemon.write()
        self.daemon.signal()
        yield self.wait_in_file(second, "configuration reloaded")
        yield garbage(self.tls_port)
        yield self.wait_in_file(second, "dropping connection")
        events = [json.loads(line) for line in read(second).splitlines()]
        self.assertIn("configuration reloaded: 0 route(s), 0 static certificate name(s)", [e["message"] for e in events])
        self.assertNotIn("dropping connection", read(first))


class UnopenableLogFileTests(ShowsDaemonOutput, TestCase):
    """
    Tests for a ``logging.file`` that cannot be opened at start.
    """

    @inlineCallbacks
    def test_usage_error_naming_the_field(self):
        """twistd exits non-zero with "logging.file: cannot open …", not a traceback."""
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "missing", "kongacme.log")
        config = os.path.join(directory, "kongacme.yaml")
        with open(config, "w") as f:
            json.dump(
                {
                    "listen": {"tls": ["tcp:%d:interface=127.0.0.1" % free_port()], "http": [], "admin": []},
                    "state_dir": os.path.join(directory, "state"),
                    "logging": {"file": path},
                },
                f,
            )
        code, output = yield run_twistd("-n", "--pidfile=", "kongacme", "--config", config)
        self.assertNotEqual(code, 0, output)
        self.assertIn("logging.file: cannot open %s: No such file or directory" % path, output)
        self.assertNotIn("Traceback", output)


class LogrotateTests(LogDaemonMixin, TestCase):
    """
    Tests for etc/kongacme.logrotate, run by the real logrotate against a
    running daemon.
    """

    @inlineCallbacks
    def test_shipped_config_rotates(self):
        """The shipped config, pointed at a temporary folder and signalling this daemon, moves the file and the daemon starts a new one."""
        logrotate = shutil.which("logrotate") or ("/usr/sbin/logrotate" if os.path.exists("/usr/sbin/logrotate") else None)
        if logrotate is None:
            raise SkipTest("logrotate is not installed (apt-get install logrotate)")
        shipped = read(os.path.join(REPO, "etc", "kongacme.logrotate"))
        directives = [line.split()[0] for line in shipped.splitlines() if line.strip() and not line.startswith("#")]
        self.assertNotIn("copytruncate", directives)
        self.assertIn("postrotate", directives)
        path = yield self.start_logging_to_file()
        folder = os.path.dirname(path)
        config = os.path.join(folder, "logrotate.conf")
        with open(config, "w") as f:
            f.write(
                shipped.replace("/var/log/kongacme/", folder + "/").replace(
                    "systemctl reload kongacme", "kill -HUP %d" % self.daemon.transport.pid
                )
            )
        os.chmod(config, 0o644)
        state = os.path.join(self.dir, "logrotate.state")
        out, err, code = yield tlsclients.run(logrotate, "--force", "--state", state, config)
        self.assertEqual(code, 0, (out, err))
        yield self.wait_in_file(path, "configuration reloaded")
        self.assertIn("started", read(path + ".1"))
        self.assertNotIn("reloading configuration", read(path + ".1"))
        yield garbage(self.tls_port)
        yield self.wait_in_file(path, "dropping connection")


class RateLimitTests(LogDaemonMixin, TestCase):
    """
    Tests for the rate limit on repeated lines in a running daemon.
    """

    @inlineCallbacks
    def test_hostile_connections_one_summary(self):
        """30 garbage connections log 5 lines, then one "25 more like this in the last 10 s" line."""
        yield self.start()
        for _ in range(30):
            yield garbage(self.tls_port)
        yield self.daemon.wait_for("more like this in the last 10 s", timeout=30)
        output = self.daemon.output
        self.assertEqual(output.count("TLS: dropping connection from 127.0.0.1:"), 5, output)
        self.assertIn(
            "25 more like this in the last 10 s: TLS: dropping connection from {peer}: {reason}", output
        )


class FactoryNoiseTests(AcmeDaemonMixin, TestCase):
    """
    Tests for Twisted's "Starting factory"/"Stopping factory" lines around
    the daemon's outgoing connections.
    """

    @inlineCallbacks
    def test_orders_leave_no_factory_lines(self):
        """Orders (CA connections, with storage: kong files) leave no Starting/Stopping factory line at info."""
        yield self.start(storage="kong")
        results = yield gatherResults(
            [
                tlsclients.handshake(self.tls_port, "%s.example.test" % name, self.verified(), payload=b"")
                for name in ("one", "two", "three")
            ]
        )
        self.assertEqual(sorted(r["names"][0] for r in results), ["one.example.test", "three.example.test", "two.example.test"])
        output = self.daemon.output
        self.assertIn("ordering a certificate for one.example.test", output)
        self.assertNotIn("Starting factory", output)
        self.assertNotIn("Stopping factory", output)
