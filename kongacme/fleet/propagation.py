"""
Certificates issued or renewed on one node served by every node: a change
marker per host that other nodes poll for (about one poll interval), an
optional push feed (Redis pub/sub, :mod:`kongacme.fleet.feed`: a few
milliseconds), and a full sync of Kong's ``cert_key`` entries now and then
for certificates written by Kong nodes, which write no markers.

With a feed, the markers are the safety net for messages lost while a
node was not subscribed: every (re)subscription is followed by a poll at
once, and while the feed is connected the polls slow down to every
:data:`FEED_POLL_INTERVAL` seconds (or ``poll_interval`` if longer); they
run every ``poll_interval`` again as soon as it is lost.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, gatherResults, inlineCallbacks, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kongacme.fleet.feed import IChangeFeed
from kongacme.interfaces import IStorage
from kongacme.issuance.stored import read_certificate, served_names
from kongacme.storage import keys
from kongacme.storage.errors import StorageError
from kongacme.tls.cache import CertificateCache

#: kongacme's own key prefix (outside Kong's reserved ``kong_acme:`` words
#: so Kong ignores it): ``kongacme:changed:<host>`` holds the fingerprint
#: of the certificate just stored, for ``MARKER_TTL`` seconds.
CHANGED_PREFIX = "kongacme:changed:"
MARKER_TTL = 120.0

#: Seconds between marker polls while a change feed is connected (well
#: under :data:`MARKER_TTL`, so a marker is always seen by some poll).
FEED_POLL_INTERVAL = 30.0


def changed_key(host: str) -> str:
    """The change marker for ``host``."""
    return CHANGED_PREFIX + host


class Propagator:
    """
    Keeps this node's certificate cache in step with the shared storage.

    :param storage: the shared store.
    :param cache: this node's cache.
    :param clock: timers.
    :param poll_interval: seconds between polls of the change markers.
    :param full_sync_interval: seconds between full syncs of every stored
        certificate (catches what Kong nodes wrote).
    :param feed: a push channel to the other nodes, or ``None`` (markers
        only).
    :param feed_poll_interval: seconds between marker polls while ``feed``
        is connected.
    """

    log = Logger()

    def __init__(
        self,
        storage: IStorage,
        cache: CertificateCache,
        clock: IReactorTime,
        poll_interval: float = 1.0,
        full_sync_interval: float = 300.0,
        feed: Optional[IChangeFeed] = None,
        feed_poll_interval: float = FEED_POLL_INTERVAL,
    ):
        self._storage = storage
        self._feed = feed
        self.feed_poll_interval = max(feed_poll_interval, poll_interval)
        self._last_poll: Optional[float] = None
        self._cache = cache
        self._clock = clock
        self.poll_interval = poll_interval
        self.full_sync_interval = full_sync_interval
        self._seen: dict[str, bytes] = {}
        self._poll: Optional[LoopingCall] = None
        self._sync: Optional[LoopingCall] = None
        self._failing = False

    def announce(self, host: str, fingerprint: str) -> Deferred:
        """
        Tell the other nodes that ``host`` has a new certificate (called
        after it is stored). Failures are logged, not raised.
        """
        self._seen[host] = fingerprint.encode("ascii")
        sent = [self._storage.set(changed_key(host), fingerprint.encode("ascii"), MARKER_TTL)]
        if self._feed is not None:
            sent.append(self._feed.publish(host, fingerprint))
        return gatherResults(sent, consumeErrors=True).addCallbacks(
            lambda _: None,
            lambda f: self.log.warn("could not announce the certificate for {host}: {e}", host=host,
                                    e=f.value.subFailure.getErrorMessage()),
        )

    def start(self, initial_sync: bool = True) -> None:
        """
        Start polling and listening to the feed.

        :param initial_sync: run the first full sync at once; the daemon
            passes ``False`` as it loads every stored certificate itself at
            start (a second read of all of them doubled a cold start).
        """
        if self._feed is not None:
            self._feed.start(self._changed, self._feed_connected)
        self._poll = LoopingCall(self._scheduled_poll)
        self._poll.clock = self._clock
        self._poll.start(self.poll_interval, now=False)
        self._sync = LoopingCall(self.full_sync)
        self._sync.clock = self._clock
        self._sync.start(self.full_sync_interval, now=initial_sync)

    def stop(self) -> Deferred:
        """
        Stop polling and close the feed.

        :return: ``Deferred`` firing with ``None`` once the feed is closed.
        """
        for loop in (self._poll, self._sync):
            if loop is not None and loop.running:
                loop.stop()
        if self._feed is None:
            return succeed(None)
        return self._feed.stop().addErrback(lambda f: self.log.failure("closing the change feed failed", f))

    def _scheduled_poll(self) -> Any:
        # The feed connected: its messages do the work, polls only catch
        # what it may have dropped, so they can be rare.
        now = self._clock.seconds()
        if (
            self._feed is not None
            and self._feed.connected
            and self._last_poll is not None
            and now - self._last_poll < self.feed_poll_interval
        ):
            return None
        return self.poll_changes()

    def _feed_connected(self) -> None:
        # Whatever was announced while we were not subscribed has a marker.
        self.poll_changes()

    @inlineCallbacks
    def _changed(self, host: str, fingerprint: str):
        """A change message: load ``host``'s certificate unless already held. Never raises."""
        try:
            current = self._cache.get(host)
            if self._seen.get(host) == fingerprint.encode("ascii") or (
                current is not None and current.fingerprint == fingerprint
            ):
                return
            loaded = yield self._load(host)
            if loaded:
                self._seen[host] = loaded.fingerprint.encode("ascii")
        except StorageError as e:
            # Storage went away between the message and the read: the
            # marker is read again once it is back.
            self._failed(e)
        except Exception:
            self.log.failure("could not load the certificate announced for {host}", host=host)

    @inlineCallbacks
    def poll_changes(self):
        """Load the certificates whose change marker is new to this node. Never raises."""
        self._last_poll = self._clock.seconds()
        try:
            names = yield self._storage.list(CHANGED_PREFIX)
            for key in names:
                host = key[len(CHANGED_PREFIX):]
                marker = yield self._storage.get(key)
                if marker is None or self._seen.get(host) == marker:
                    continue
                if (yield self._load(host)):
                    self._seen[host] = marker
            self._recovered()
        except Exception as e:
            self._failed(e)

    @inlineCallbacks
    def full_sync(self):
        """Load every stored certificate that differs from the cache. Never raises."""
        try:
            names = yield self._storage.list(keys.CERT_KEY_PREFIX)
            loaded = 0
            for key in names:
                if (yield self._load(key[len(keys.CERT_KEY_PREFIX):])):
                    loaded += 1
            if loaded:
                self.log.info("full sync: {count} certificate(s) updated from storage", count=loaded)
            self._recovered()
        except Exception as e:
            self._failed(e)

    @inlineCallbacks
    def _load(self, host: str):
        """
        Put ``host``'s stored certificate in the cache if it differs.

        :return: ``Deferred`` firing with the certificate if it was put in
            the cache, else ``None``.
        """
        certified = yield read_certificate(self._storage, host)
        if certified is None:
            return None
        current = self._cache.get(host)
        if current is not None and current.fingerprint == certified.fingerprint:
            return None
        # A wildcard certificate serves its base name too (issuance.wildcard).
        self._cache.put(certified, served_names(host, certified))
        return certified

    def _failed(self, error: Any) -> None:
        if not self._failing:
            self._failing = True
            self.log.warn(
                "storage unavailable for certificate propagation ({error}); serving what this node holds",
                error=str(error),
            )

    def _recovered(self) -> None:
        if self._failing:
            self._failing = False
            self.log.info("storage reachable again: certificate propagation resumed")
