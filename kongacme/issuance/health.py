"""
Whether the storage can be used for new orders: a storage that failed is
probed until it answers again, and each transition is logged once.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kongacme.interfaces import IStorage

#: The key probed while storage is down (read only; absent is an answer).
PROBE_KEY = "kongacme:probe"


class StorageHealth:
    """
    Tracks the storage's availability for the certificate manager.

    A failure reported by a caller (:meth:`failed`) marks the storage down
    and starts a probe every ``probe_interval`` seconds; the first probe
    (or reported success) that gets an answer marks it up again. While it
    is down the manager starts no new orders; certificates already held
    are served from memory all along.

    :param storage: the storage probed.
    :param clock: timers and "now".
    :param probe_interval: seconds between probes while down.
    """

    log = Logger()

    def __init__(self, storage: IStorage, clock: IReactorTime, probe_interval: float = 2.0):
        self._storage = storage
        self._clock = clock
        self.probe_interval = probe_interval
        self.available = True
        self.down_since: Optional[float] = None
        self.last_error: Optional[str] = None
        self.outages = 0
        self._probe: Optional[LoopingCall] = None

    def failed(self, error: Any) -> None:
        """A storage operation failed with ``error`` (an exception or message)."""
        self.last_error = str(error)
        if not self.available:
            return
        self.available = False
        self.down_since = self._clock.seconds()
        self.outages += 1
        self.log.error(
            "storage unavailable ({error}): new orders and renewals paused; certificates held are still served",
            error=self.last_error,
        )
        self._probe = LoopingCall(self._check)
        self._probe.clock = self._clock
        self._probe.start(self.probe_interval, now=False).addErrback(
            lambda f: self.log.failure("storage probe stopped", f)
        )

    def succeeded(self) -> None:
        """A storage operation got an answer."""
        if self.available:
            return
        self.available = True
        self._stop_probe()
        down_for = self._clock.seconds() - (self.down_since or self._clock.seconds())
        self.down_since = None
        self.log.info("storage reachable again after {seconds:.0f} s: new orders and renewals resumed",
                      seconds=down_for)

    def _check(self) -> Any:
        def answered(_: object) -> None:
            self.succeeded()

        def unanswered(failure: Any) -> None:
            self.last_error = failure.getErrorMessage()

        return self._storage.get(PROBE_KEY).addCallbacks(answered, unanswered)

    def _stop_probe(self) -> None:
        if self._probe is not None and self._probe.running:
            self._probe.stop()
        self._probe = None

    def stop(self) -> None:
        """Stop probing (daemon shutdown or storage replaced)."""
        self._stop_probe()

    def status(self) -> dict:
        return {
            "available": self.available,
            "down_since": self.down_since,
            "last_error": self.last_error,
            "outages": self.outages,
        }
