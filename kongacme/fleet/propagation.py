"""
Certificates issued or renewed on one node served by every node: a change
marker per host that other nodes poll for (fast path, about one poll
interval), and a full sync of Kong's ``cert_key`` entries now and then for
certificates written by Kong nodes, which write no markers.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from kongacme.errors import CertificateError
from kongacme.interfaces import IStorage
from kongacme.storage import keys
from kongacme.tls.cache import CertificateCache

#: kongacme's own key prefix (outside Kong's reserved ``kong_acme:`` words
#: so Kong ignores it): ``kongacme:changed:<host>`` holds the fingerprint
#: of the certificate just stored, for ``MARKER_TTL`` seconds.
CHANGED_PREFIX = "kongacme:changed:"
MARKER_TTL = 120.0


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
    """

    log = Logger()

    def __init__(
        self,
        storage: IStorage,
        cache: CertificateCache,
        clock: IReactorTime,
        poll_interval: float = 1.0,
        full_sync_interval: float = 300.0,
    ):
        self._storage = storage
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
        return self._storage.set(changed_key(host), fingerprint.encode("ascii"), MARKER_TTL).addErrback(
            lambda f: self.log.warn("could not announce the certificate for {host}: {e}", host=host,
                                    e=f.getErrorMessage())
        )

    def start(self) -> None:
        """Start polling (the first full sync runs at once)."""
        self._poll = LoopingCall(self.poll_changes)
        self._poll.clock = self._clock
        self._poll.start(self.poll_interval, now=False)
        self._sync = LoopingCall(self.full_sync)
        self._sync.clock = self._clock
        self._sync.start(self.full_sync_interval, now=True)

    def stop(self) -> None:
        """Stop polling."""
        for loop in (self._poll, self._sync):
            if loop is not None and loop.running:
                loop.stop()

    @inlineCallbacks
    def poll_changes(self):
        """Load the certificates whose change marker is new to this node. Never raises."""
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
        """Put ``host``'s stored certificate in the cache if it differs; True if it did."""
        key = keys.cert_key(host)
        raw = yield self._storage.get(key)
        if raw is None:
            return False
        try:
            certified = keys.decode_cert_key(raw, key)
        except (CertificateError, ValueError) as e:
            self.log.warn("ignoring corrupt stored certificate {key}: {error}", key=key, error=str(e))
            return False
        current = self._cache.get(host)
        if current is not None and current.fingerprint == certified.fingerprint:
            return False
        self._cache.put(certified, [host])
        return True

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
