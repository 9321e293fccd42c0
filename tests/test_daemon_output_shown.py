"""
A guard for issue 9, defect 10: "a failing end-to-end test must print the
daemon's log". :class:`tests.daemonproc.ShowsDaemonOutput` does that for a
test case that lists it; this checks that every test case in ``tests/``
that starts a real daemon process (``Daemon(...)`` from
``tests.daemonproc``, or ``start_nodes(...)`` from ``tests.fleetnodes``)
lists it, so that a new end-to-end test module cannot forget it.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import re
import unittest

from twisted.trial.unittest import SynchronousTestCase

import tests
from tests.daemonproc import ShowsDaemonOutput

#: A call that starts a real daemon process (``FakeDaemon(`` and the like
#: are in-process doubles and do not count).
STARTS_DAEMON = re.compile(r"(?<![\w.])(?:Daemon|start_nodes)\(")


def _own_source(case: type) -> str:
    """The source of ``case`` and of each class it inherits from ``tests``."""
    parts = []
    for klass in case.__mro__:
        if klass.__module__.startswith("tests."):
            try:
                parts.append(inspect.getsource(klass))
            except (OSError, TypeError):
                pass
    return "\n".join(parts)


def daemon_test_cases() -> list[type]:
    """Every test case class in ``tests.test_*`` whose code starts a daemon."""
    found = []
    for info in sorted(pkgutil.iter_modules(tests.__path__), key=lambda info: info.name):
        if not info.name.startswith("test_") or info.name == __name__.rsplit(".", 1)[-1]:
            continue
        module = importlib.import_module("tests." + info.name)
        for value in vars(module).values():
            if (
                inspect.isclass(value)
                and issubclass(value, unittest.TestCase)
                and value.__module__ == module.__name__
                and STARTS_DAEMON.search(_own_source(value))
            ):
                found.append(value)
    return found


class DaemonOutputShownTests(SynchronousTestCase):
    """
    Tests that end-to-end test cases show the daemon's output on failure.
    """

    def test_pattern(self) -> None:
        """The pattern finds real daemons, not in-process doubles."""
        self.assertTrue(STARTS_DAEMON.search("self.daemon = Daemon(self.dir, {})"))
        self.assertTrue(STARTS_DAEMON.search("nodes = yield start_nodes(self, 2)"))
        self.assertFalse(STARTS_DAEMON.search("FakeDaemon(cache=cache)"))
        self.assertFalse(STARTS_DAEMON.search("class Daemon:"))

    def test_every_daemon_test_lists_the_mixin(self) -> None:
        """
        Each test case that starts a daemon process inherits
        ShowsDaemonOutput (found: the end-to-end modules, dozens of cases).
        """
        cases = daemon_test_cases()
        names = {"%s.%s" % (case.__module__, case.__name__) for case in cases}
        # The search itself works: the headline end-to-end case is found.
        self.assertIn("tests.test_daemon_acme.OnDemandTests", names)
        missing = sorted(
            "%s.%s" % (case.__module__, case.__name__) for case in cases if not issubclass(case, ShowsDaemonOutput)
        )
        self.assertEqual(missing, [], "these start a daemon but do not list ShowsDaemonOutput before TestCase")
