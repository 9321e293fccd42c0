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
        self.assertEqual(self.ended, [self.spawned[0]])
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


class RenewTests(SynchronousTestCase):
    """
    Tests for WorkerSupervisor.renew: a new generation of workers (new
    listening sockets), each old worker drained once its successor accepts.
    """

    def setUp(self):
        self.clock = Clock()
        self.spawned = []
        self.ended = []
        self.supervisor = WorkerSupervisor(self.clock, 2, self.spawn, on_ended=self.ended.append, drain_deadline=7)
        self.supervisor.startService()

    def spawn(self, slot):
        process = FakeProcess(slot, 100 + len(self.spawned))
        process.accepting = Deferred()
        self.spawned.append(process)
        return process

    def test_old_drained_once_new_accepts(self):
        """
        Every slot gets a new worker at once; the old one keeps running,
        not drained, until its own slot's new worker accepts; its end
        is not a death (nothing restarted).
        """
        old1, old2 = self.spawned
        self.supervisor.renew()
        new1, new2 = self.spawned[2:]
        self.assertEqual((new1.slot, new2.slot), (1, 2))
        self.assertEqual(self.supervisor.processes, {1: new1, 2: new2})
        self.assertEqual(set(self.supervisor.superseded), {old1, old2})
        self.assertEqual((old1.drained, old2.drained), (None, None))
        new2.accepting.callback(None)
        self.assertEqual((old1.drained, old2.drained), (None, 7))
        new1.accepting.callback(None)
        self.assertEqual(old1.drained, 7)
        old1.die("exited with status 0")
        old2.die("exited with status 0")
        self.assertEqual(self.ended, [old1, old2])
        self.assertEqual(self.supervisor.superseded, {})
        self.clock.advance(60)
        self.assertEqual(len(self.spawned), 4)
        self.assertEqual(self.supervisor.restarts, 0)

    def test_new_worker_dies_before_accepting(self):
        """
        A new worker that dies before accepting is replaced with the
        backoff; the old one serves meanwhile and is drained when the
        replacement accepts.
        """
        old1 = self.spawned[0]
        self.supervisor.renew()
        new1 = self.spawned[2]
        new1.die()
        self.assertEqual(old1.drained, None)
        self.clock.advance(0.5)
        again = self.spawned[4]
        self.assertEqual(again.slot, 1)
        self.assertEqual(self.supervisor.restarts, 1)
        again.accepting.callback(None)
        self.assertEqual(old1.drained, 7)

    def test_renew_twice(self):
        """
        A second renew before the first generation accepted: both older
        workers of a slot are drained when the newest accepts; an
        intermediate worker accepting late drains nothing.
        """
        old1 = self.spawned[0]
        self.supervisor.renew()
        middle1 = self.spawned[2]
        self.supervisor.renew()
        newest1 = self.spawned[4]
        middle1.accepting.callback(None)
        self.assertEqual((old1.drained, middle1.drained), (None, None))
        newest1.accepting.callback(None)
        self.assertEqual((old1.drained, middle1.drained), (7, 7))

    def test_stop_drains_every_generation(self):
        """Stopping drains the current workers and the old ones not yet drained; fires once all ended."""
        self.supervisor.renew()
        stopped = self.supervisor.stopService()
        self.assertTrue(all(p.drained == 7 for p in self.spawned))
        for process in self.spawned[:3]:
            process.die("exited with status 0")
        self.assertNoResult(stopped)
        self.spawned[3].die("exited with status 0")
        self.successResultOf(stopped)
        self.assertEqual(len(self.spawned), 4)


class DescribeExitTests(SynchronousTestCase):
    """
    Tests for describe_exit.
    """

    def test_texts(self):
        """Exit status or signal, as logged."""
        self.assertEqual(describe_exit(Failure(ProcessDone(0))), "exited with status 0")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(3))), "exited with status 3")
        self.assertEqual(describe_exit(Failure(ProcessTerminated(signal=9))), "was killed by signal 9")
