"""
Tests for kongacme.workers.supervisor: the replacement delay, replacing
workers that die, draining on stop (with a Clock and fake processes).
"""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from kongacme.workers.supervisor import Backoff, WorkerSupervisor, describe_exit


class FakeProcess:
    """A worker process the test ends by hand."""

    def __init__(self, slot, pid):
        self.slot = slot
        self.pid = pid
        self.ended = Deferred()
        self.drained = None

    def die(self, status="was killed by signal 9"):
        self.ended.callback(status)

    def drain(self, deadline):
        self.drained = deadline
        return self.ended.addCallback(lambda _: None)


class BackoffTests(SynchronousTestCase):
    """
    Tests for Backoff.
    """

    def test_doubles_to_the_maximum(self):
        """Quick deaths: 0.5 s, doubling, at most 30 s."""
        backoff = Backoff()
        self.assertEqual([backoff.delay(1.0) for _ in range(9)], [0.5, 1, 2, 4, 8, 16, 30, 30, 30])

    def test_reset_after_a_long_life(self):
        """A worker that lived 60 s or more starts the sequence again."""
        backoff = Backoff()
        for _ in range(5):
            backoff.delay(1.0)
        self.assertEqual(backoff.delay(60.0), 0.5)
        self.assertEqual(backoff.delay(2.0), 1.0)


class SupervisorTests(SynchronousTestCase):
    """
    Tests for WorkerSupervisor.
    """

    def setUp(self):
        self.clock = Clock()
        self.spawned = []
        self.ended = []
        self.supervisor = WorkerSupervisor(self.clock, 2, self.spawn, on_ended=self.ended.append)

    def spawn(self, slot):
        process = FakeProcess(slot, 100 + len(self.spawned))
        self.spawned.append(process)
        return process

    def test_starts_every_slot(self):
        """Starting the service starts one worker per slot."""
        self.supervisor.startService()
        self.assertEqual([p.slot for p in self.spawned], [1, 2])
        self.assertEqual(sorted(self.supervisor.processes), [1, 2])

    def test_dead_worker_replaced_with_backoff(self):
        """
        A worker that dies is replaced after 0.5 s in the same slot, the
        other keeps running; dying again soon doubles the delay.
        """
        self.supervisor.startService()
        self.spawned[0].die()
        self.assertEqual(self.ended, [1])
        self.assertEqual(sorted(self.supervisor.processes), [2])
        self.clock.advance(0.49)
        self.assertEqual(len(self.spawned), 2)
        self.clock.advance(0.01)
        self.assertEqual([p.slot for p in self.spawned], [1, 2, 1])
        self.spawned[2].die()
        self.clock.advance(0.5)
        self.assertEqual(len(self.spawned), 3)
        self.clock.advance(0.5)
        self.assertEqual(len(self.spawned), 4)
        self.assertEqual(self.supervisor.restarts, 2)
        # After a minute alive, the next death is replaced after 0.5 s again.
        self.clock.advance(60)
        self.spawned[3].die()
        self.clock.advance(0.5)
        self.assertEqual(len(self.spawned), 5)

    def test_failed_spawn_retried(self):
        """A worker that cannot be started is tried again after the backoff delay."""
        attempts = []

        def failing(slot):
            attempts.append(slot)
            raise OSError("no more processes")

        supervisor = WorkerSupervisor(self.clock, 1, failing)
        supervisor.startService()
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        self.clock.advance(0.5)
        self.assertEqual(attempts, [1, 1])
        self.assertEqual(len(self.flushLoggedErrors(OSError)), 1)
        supervisor.stopService()

    def test_stop_drains_and_replaces_nothing(self):
        """Stopping drains every worker, fires once all ended, and no replacement starts."""
        self.supervisor.startService()
        self.spawned[0].die()
        stopped = self.supervisor.stopService()
        self.clock.advance(10)
        self.assertEqual(len(self.spawned), 2)
        self.assertEqual(self.spawned[1].drained, 10.0)
        self.assertNoResult(stopped)
        self.spawned[1].die("exited with status 0")
        self.successResultOf(stopped)


class DescribeExitTests(SynchronousTestCase):
    """
    Tests for describe_exit.
    """

    def test_texts(self):
        """Exit status or signal, as logged."""
        self.assertEqual(describe_exit(Failure(ProcessDone(0))), "exited with status 0")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(3))), "exited with status 3")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(signal=9))), "was killed by signal 9")
