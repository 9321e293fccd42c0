"""
Tests for kongacme.logs: the rate limiter, flat JSON lines, the reopenable
log file and the daemon's observer chain (units, with a Clock).
"""

import io
import json
import os

from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel, LogPublisher, formatEvent
from twisted.python import log as legacy_log
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kongacme.logs import (
    DaemonLogObserver,
    LogFile,
    RateLimitingObserver,
    event_as_json,
    event_kind,
    rfc3339,
)


def event(fmt="dropping connection from {peer}: {reason}", level=LogLevel.info, namespace="kongacme.tls", **fields):
    """A log event as twisted.logger.Logger.emit makes it."""
    return dict(fields, log_format=fmt, log_level=level, log_namespace=namespace, log_time=1_800_000_000.25)


def failure_of(exception_type, message="boom"):
    try:
        raise exception_type(message)
    except exception_type:
        return Failure()


class RateLimitingObserverTests(SynchronousTestCase):
    """
    Tests for RateLimitingObserver.
    """

    def setUp(self):
        self.clock = Clock()
        self.seen = []
        self.limiter = RateLimitingObserver(self.seen.append, self.clock, burst=5, window=10.0)

    def test_burst_then_one_summary(self):
        """Five lines of a kind pass; the other 95 in the window become one summary line when it ends."""
        for n in range(100):
            self.limiter(event(peer="10.0.0.%d" % n, reason="not TLS"))
            self.clock.advance(0.01)
        self.assertEqual(len(self.seen), 5)
        self.clock.advance(10)
        self.assertEqual(len(self.seen), 6)
        summary = self.seen[-1]
        self.assertEqual(
            formatEvent(summary),
            "95 more like this in the last 10 s: dropping connection from {peer}: {reason}",
        )
        self.assertEqual(summary["log_level"], LogLevel.info)
        self.assertEqual(summary["log_namespace"], "kongacme.tls")
        self.assertEqual(summary["suppressed"], 95)

    def test_new_window_after_summary(self):
        """After the summary a new window starts: the next burst passes again."""
        for _ in range(7):
            self.limiter(event(peer="a", reason="x"))
        self.clock.advance(10)
        for _ in range(7):
            self.limiter(event(peer="b", reason="y"))
        self.assertEqual([e.get("peer") for e in self.seen], ["a"] * 5 + [None] + ["b"] * 5)

    def test_no_summary_without_suppression(self):
        """A kind that stays within its burst gets no summary line, and its window expires by itself."""
        for _ in range(5):
            self.limiter(event(peer="a", reason="x"))
        self.clock.advance(10)
        self.assertEqual(len(self.seen), 5)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        for _ in range(5):
            self.limiter(event(peer="a", reason="x"))
        self.assertEqual(len(self.seen), 10)

    def test_kinds_counted_apart(self):
        """Other formats, levels or namespaces have their own bursts."""
        for _ in range(10):
            self.limiter(event())
            self.limiter(event(fmt="handshake timed out for {peer}"))
            self.limiter(event(level=LogLevel.warn))
            self.limiter(event(namespace="kongacme.web"))
        self.assertEqual(len(self.seen), 20)

    def test_distinct_failures_pass(self):
        """Failures of distinct types under one format each get their first lines through; repeats are limited."""
        for exception_type in (ValueError, KeyError, OSError):
            for _ in range(10):
                self.limiter(event(fmt="order failed for {host}", level=LogLevel.critical, log_failure=failure_of(exception_type), host="h"))
        self.assertEqual(
            [e["log_failure"].type for e in self.seen], [ValueError] * 5 + [KeyError] * 5 + [OSError] * 5
        )
        self.clock.advance(10)
        self.assertEqual([e["suppressed"] for e in self.seen[15:]], [5, 5, 5])

    def test_legacy_text_lines_by_text(self):
        """Free-text lines (legacy log.msg) are kinds by their text, not by their shared format."""
        for text in ("one", "two", "three"):
            for _ in range(6):
                self.limiter(event(fmt="{log_text}", namespace="log_legacy", log_text=text))
        self.assertEqual(len(self.seen), 15)

    def test_table_bounded(self):
        """Beyond max_kinds, new kinds share one window: the table cannot grow without bound."""
        limiter = RateLimitingObserver(self.seen.append, self.clock, burst=2, window=10.0, max_kinds=10)
        for n in range(1000):
            limiter(event(fmt="{log_text}", namespace="log_legacy", log_text="line %d" % n))
        self.assertLessEqual(len(limiter._windows), 11)
        self.assertEqual(len(self.seen), 10 + 2)
        self.clock.advance(10)
        self.assertEqual(
            formatEvent(self.seen[-1]), "988 more like this in the last 10 s: lines of many kinds"
        )
        # Expired kinds make room again.
        limiter(event(fmt="{log_text}", namespace="log_legacy", log_text="fresh"))
        self.assertEqual(self.seen[-1]["log_text"], "fresh")

    def test_stop_reports_pending(self):
        """Stopping reports the suppressed count at once and leaves no timer behind."""
        for _ in range(8):
            self.limiter(event())
        self.limiter.stop()
        self.assertEqual(self.seen[-1]["suppressed"], 3)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_unlimited_lines_pass(self):
        """Lines marked log_unlimited (one per order) all pass and use no window."""
        for n in range(50):
            self.limiter(event("ordering a certificate for {host}", host="n%d" % n, log_unlimited=True))
        self.assertEqual(len(self.seen), 50)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_other_threads_pass(self):
        """Lines logged from another thread pass unlimited and schedule nothing (the clock is the reactor's)."""
        import threading

        def flood():
            for _ in range(20):
                self.limiter(event())

        thread = threading.Thread(target=flood)
        thread.start()
        thread.join()
        self.assertEqual(len(self.seen), 20)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_kind_ignores_field_values(self):
        """Two events differing only in field values are one kind."""
        self.assertEqual(event_kind(event(peer="a", reason="b")), event_kind(event(peer="c", reason="d")))


class JsonLineTests(SynchronousTestCase):
    """
    Tests for event_as_json.
    """

    def test_flat_object(self):
        """time (RFC 3339 UTC), level, logger, the rendered message and the event's own fields."""
        line = event_as_json(event(peer="10.0.0.1:5000", reason="not a ClientHello"))
        self.assertTrue(line.endswith("\n"))
        self.assertEqual(line.count("\n"), 1)
        self.assertEqual(
            json.loads(line),
            {
                "time": "2027-01-15T08:00:00.250Z",
                "level": "info",
                "logger": "kongacme.tls",
                "message": "dropping connection from 10.0.0.1:5000: not a ClientHello",
                "peer": "10.0.0.1:5000",
                "reason": "not a ClientHello",
            },
        )

    def test_levels(self):
        """level is the level's name."""
        for level, name in [
            (LogLevel.debug, "debug"),
            (LogLevel.info, "info"),
            (LogLevel.warn, "warn"),
            (LogLevel.error, "error"),
            (LogLevel.critical, "critical"),
        ]:
            self.assertEqual(json.loads(event_as_json(event(level=level)))["level"], name)

    def test_rfc3339(self):
        """Milliseconds, Z for UTC."""
        self.assertEqual(rfc3339(0), "1970-01-01T00:00:00.000Z")
        self.assertEqual(rfc3339(1796311201.123456), "2026-12-03T15:20:01.123Z")

    def test_unserialisable_values(self):
        """Values JSON cannot carry become their str; JSON values stay as they are."""

        class Peer:
            def __str__(self):
                return "IPv4Address(TCP, '10.0.0.1', 5000)"

        circular: list = []
        circular.append(circular)
        line = json.loads(
            event_as_json(
                event(
                    "{peer} {n} {ok} {names} {raw} {nan} {loop}",
                    peer=Peer(),
                    n=3,
                    ok=True,
                    names=["a", "b"],
                    raw=b"\x00\x01",
                    nan=float("nan"),
                    loop=circular,
                )
            )
        )
        self.assertEqual(line["peer"], "IPv4Address(TCP, '10.0.0.1', 5000)")
        self.assertEqual(line["n"], 3)
        self.assertIs(line["ok"], True)
        self.assertEqual(line["names"], ["a", "b"])
        self.assertEqual(line["raw"], "b'\\x00\\x01'")
        self.assertEqual(line["nan"], "nan")
        self.assertEqual(line["loop"], "[[...]]")

    def test_no_internal_keys(self):
        """No log_* key, and a field named like a top-level one does not overwrite it."""
        line = json.loads(event_as_json(event("{host}: {message}", host="h", message="not due", log_source=object())))
        self.assertFalse([key for key in line if key.startswith("log_")])
        self.assertEqual(line["message"], "h: not due")
        self.assertEqual(line["field_message"], "not due")

    def test_failure_traceback(self):
        """A failure's traceback is in traceback; the message is the rendered format."""
        line = json.loads(
            event_as_json(event("renewal failed for {host}", LogLevel.critical, host="h", log_failure=failure_of(ValueError, "bad")))
        )
        self.assertEqual(line["message"], "renewal failed for h")
        self.assertIn("ValueError: bad", line["traceback"])
        self.assertIn("Traceback", line["traceback"])

    def test_from_a_logger(self):
        """What a real Logger emits becomes one flat line."""
        captured = []
        Logger(namespace="kongacme.test", observer=captured.append).warn("storage down: {error}", error=OSError("x"))
        line = json.loads(event_as_json(captured[0]))
        self.assertEqual((line["level"], line["logger"], line["message"]), ("warn", "kongacme.test", "storage down: x"))
        self.assertEqual(line["error"], "x")

    def test_legacy_event(self):
        """A legacy log.msg/log.err event: rendered text as message, no legacy bookkeeping keys."""
        captured = []
        new = LogPublisher()
        new.addObserver(captured.append)
        legacy = legacy_log.LogPublisher(new, new)
        legacy.msg("hello", "world")
        # What twisted.python.log.err sends.
        legacy.msg(failure=failure_of(KeyError, "k"), why="while testing", isError=1)
        first, second = (json.loads(event_as_json(e)) for e in captured)
        self.assertEqual(first["message"], "hello world")
        self.assertEqual(first["level"], "info")
        self.assertEqual(set(first), {"time", "level", "logger", "message"})
        self.assertEqual(second["level"], "critical")
        self.assertIn("while testing", second["message"])
        self.assertIn("KeyError", second["message"])


class LogFileTests(SynchronousTestCase):
    """
    Tests for LogFile.
    """

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "kongacme.log")

    def test_reopen_after_move(self):
        """After the file is moved, reopen creates it again and writes there."""
        log = LogFile(self.path)
        self.addCleanup(log.close)
        log.write("one\n")
        os.rename(self.path, self.path + ".1")
        log.write("two\n")
        log.reopen()
        log.write("three\n")
        with open(self.path + ".1") as f:
            self.assertEqual(f.read(), "one\ntwo\n")
        with open(self.path) as f:
            self.assertEqual(f.read(), "three\n")

    def test_failed_reopen_keeps_old(self):
        """A reopen that cannot open the path raises and keeps writing to the old file."""
        log = LogFile(self.path)
        self.addCleanup(log.close)
        os.rename(self.path, os.path.join(self.dir, "moved.log"))
        os.mkdir(self.path)  # the path is now a directory: open fails
        self.assertRaises(OSError, log.reopen)
        log.write("still here\n")
        with open(os.path.join(self.dir, "moved.log")) as f:
            self.assertEqual(f.read(), "still here\n")


class DaemonLogObserverTests(SynchronousTestCase):
    """
    Tests for DaemonLogObserver: the daemon's chain.
    """

    def setUp(self):
        self.clock = Clock()
        self.out = io.StringIO()

    def observer(self, level="info", fmt="text"):
        return DaemonLogObserver(self.clock, level, fmt, "-", stdout=self.out)

    def test_factory_noise_silenced(self):
        """Twisted's Starting/Stopping factory lines are not written at info, and are at debug."""
        from twisted.internet.protocol import ClientFactory

        class Noisy(ClientFactory):
            noisy = True

        observer = self.observer()
        from twisted.logger import globalLogPublisher

        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        factory = Noisy()
        factory.doStart()
        factory.doStop()
        self.assertEqual(self.out.getvalue(), "")
        debug = self.observer(level="debug")
        globalLogPublisher.addObserver(debug)
        self.addCleanup(globalLogPublisher.removeObserver, debug)
        factory.doStart()
        self.assertIn("Starting factory", self.out.getvalue())

    def test_level_filter_before_limit(self):
        """Lines below the level are dropped and do not use up the burst."""
        observer = self.observer(level="warn")
        for _ in range(20):
            observer(event(level=LogLevel.info))
        for _ in range(3):
            observer(event(level=LogLevel.warn))
        self.assertEqual(self.out.getvalue().count("dropping connection"), 3)

    def test_text_unchanged(self):
        """Text lines are Twisted's classic format, as before."""
        observer = self.observer()
        observer(event(peer="p", reason="r"))
        self.assertRegex(self.out.getvalue(), r"^\S+ \[kongacme.tls#info\] dropping connection from p: r\n$")

    def test_json_lines_and_limit(self):
        """JSON lines through the limiter: five lines, then the summary as a JSON line too."""
        observer = self.observer(fmt="json")
        for n in range(9):
            observer(event(peer=str(n), reason="r"))
        self.clock.advance(10)
        lines = [json.loads(line) for line in self.out.getvalue().splitlines()]
        self.assertEqual([line.get("peer") for line in lines], ["0", "1", "2", "3", "4", None])
        self.assertEqual(lines[-1]["suppressed"], 4)
        self.assertEqual(lines[-1]["message"], "4 more like this in the last 10 s: dropping connection from {peer}: {reason}")

    def test_reconfigure(self):
        """Level, format and file change in place; an unopenable file changes nothing."""
        observer = self.observer()
        path = os.path.abspath(self.mktemp())
        observer.reconfigure("warn", "json", path)
        observer(event(level=LogLevel.info))
        observer(event(level=LogLevel.warn, peer="p", reason="r"))
        with open(path) as f:
            self.assertEqual(json.loads(f.read())["peer"], "p")
        self.assertRaises(OSError, observer.reconfigure, "info", "text", os.path.join(path, "below-a-file.log"))
        self.assertEqual((observer.level, observer.format, observer.file), ("warn", "json", path))
        observer(event(level=LogLevel.warn, peer="q", reason="r"))
        with open(path) as f:
            self.assertEqual(len(f.read().splitlines()), 2)
        observer.reconfigure("info", "text", "-")
        observer(event(peer="s", reason="r"))
        self.assertIn("dropping connection from s: r", self.out.getvalue())
