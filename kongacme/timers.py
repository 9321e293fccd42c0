"""
One timer for many deadlines: a coarse timer wheel.

Every connection has a deadline or two (the handshake, the idle check).
A Twisted ``DelayedCall`` per deadline costs a heap entry, an object and a
``cancel`` for each connection; the wheel files each deadline in a bucket
of ``1 / resolution`` seconds and keeps one ``DelayedCall`` for the
earliest bucket that holds anything. Adding and cancelling a deadline are a
dict insert and delete; a deadline runs at most one bucket late.
"""

from __future__ import annotations

import heapq
import math
from typing import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger

log = Logger()


class Deadline:
    """
    A pending call on a :class:`TimerWheel`; :meth:`cancel` withdraws it.
    """

    __slots__ = ("_wheel", "_bucket", "_call")

    def __init__(self, wheel: "TimerWheel", bucket: int, call: Callable[[], object]):
        self._wheel = wheel
        self._bucket = bucket
        self._call = call

    def active(self) -> bool:
        """Whether it has neither run nor been cancelled."""
        return self._bucket >= 0

    def redirect(self, call: Callable[[], object]) -> None:
        """
        Run ``call`` instead, at the same time (a connection handing its
        deadline to the object that takes it over: no cancel and re-add).
        """
        self._call = call

    def cancel(self) -> None:
        """Withdraw the call; nothing happens if it ran or was cancelled."""
        if self._bucket >= 0:
            self._wheel._remove(self)
            self._bucket = -1


class TimerWheel:
    """
    Deadlines for many connections behind one ``DelayedCall``.

    :param clock: ``IReactorTime``; "now" and the one timer come from it.
    :param resolution: buckets per second (a deadline runs at most
        ``1 / resolution`` seconds late).
    """

    def __init__(self, clock: IReactorTime, resolution: int = 10):
        if resolution < 1:
            raise ValueError("resolution must be at least 1 bucket per second, not %r" % (resolution,))
        self._clock = clock
        self._resolution = resolution
        self._buckets: dict[int, dict[Deadline, None]] = {}
        self._order: list[int] = []
        self._timer: IDelayedCall | None = None
        self._timer_bucket = -1

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def call_at(self, when: float, call: Callable[[], object]) -> Deadline:
        """
        Run ``call()`` once the clock reaches ``when`` (seconds, the clock's
        time), at most one bucket later.
        """
        number = max(0, math.ceil(when * self._resolution))
        deadline = Deadline(self, number, call)
        bucket = self._buckets.get(number)
        if bucket is None:
            bucket = self._buckets[number] = {}
            heapq.heappush(self._order, number)
            if self._timer is None or number < self._timer_bucket:
                self._arm(number)
        bucket[deadline] = None
        return deadline

    def call_later(self, seconds: float, call: Callable[[], object]) -> Deadline:
        """Run ``call()`` ``seconds`` from now (see :meth:`call_at`)."""
        return self.call_at(self._clock.seconds() + seconds, call)

    def _remove(self, deadline: Deadline) -> None:
        number = deadline._bucket
        bucket = self._buckets.get(number)
        if bucket is None:
            return
        bucket.pop(deadline, None)
        if not bucket:
            del self._buckets[number]
            if not self._buckets:
                self._order.clear()
                self._disarm()

    def _arm(self, number: int) -> None:
        self._disarm()
        self._timer_bucket = number
        delay = max(0.0, number / self._resolution - self._clock.seconds())
        self._timer = self._clock.callLater(delay, self._run)

    def _disarm(self) -> None:
        if self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None
            self._timer_bucket = -1

    def _run(self) -> None:
        self._timer = None
        self._timer_bucket = -1
        now = self._clock.seconds()
        order = self._order
        while order:
            number = order[0]
            if number / self._resolution > now:
                break
            heapq.heappop(order)
            bucket = self._buckets.pop(number, None)
            if not bucket:
                continue
            for deadline in bucket:
                if deadline._bucket != number:
                    continue  # cancelled by an earlier call of this bucket
                deadline._bucket = -1
                try:
                    deadline._call()
                except Exception:
                    # One connection's error must not stop every other
                    # connection's deadline.
                    log.failure("deadline callback failed")
        while order and order[0] not in self._buckets:
            heapq.heappop(order)
        if order:
            self._arm(order[0])

