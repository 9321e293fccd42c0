"""
A worker's certificate cache: bounded, filled from the master on first use.

The master holds every certificate; a worker keeps at most ``tls.cache_size``
server names, least recently used first out. Each entry is the master's
answer for one server name (what its cache's lookup picks: the exact name,
else a wildcard one label deep; or nothing, the fallback), so a wildcard in
the worker never hides an exact certificate the worker has not fetched.

:class:`WorkerCertificateCache` is read synchronously by the SNI path;
:class:`CertificateFetcher` is the handshake gate that holds a handshake
for a name the worker does not hold until the master has answered.
"""

from __future__ import annotations

import collections
import hashlib
import weakref
from typing import Callable, Iterable

from cryptography import x509

from twisted.internet.defer import Deferred, gatherResults
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from kongacme.errors import CertificateError
from kongacme.interfaces import GATE_CACHE_FILLED, ICertificateCache, IHandshakeGate
from kongacme.tls.certs import CertifiedKey
from kongacme.tls.context import Intermediates, Servable, ServedCertificate
from kongacme.workers import channel

log = Logger()

_PEM_END = "-----END CERTIFICATE-----"

#: Distinct chains of intermediates kept parsed once (a few per CA).
_INTERMEDIATES_KEPT = 64


def _wildcard_of(name: str) -> str | None:
    """The wildcard a certificate cache would try for ``name`` (``*.`` + all but its first label)."""
    dot = name.find(".")
    return "*" + name[dot:] if dot > 0 else None


@implementer(ICertificateCache)
class WorkerCertificateCache:
    """
    Server name → the master's certificate for it, for at most ``size``
    names with a certificate and ``size`` names without (kept apart, so
    that clients asking for random names cannot push out the names in use).

    A certificate is held only in the form a connection takes it, a
    :class:`ServedCertificate` (the leaf and key as OpenSSL objects, the
    intermediates shared per CA): the master's PEM is parsed straight into
    it, with no ``cryptography`` copy of the leaf and key (half of what a
    name cost, bench/RESULTS.md issue 11 "Memory, round 3"). Names served
    by one certificate share one :class:`ServedCertificate` while the worker
    holds it. The contexts a :class:`kongacme.tls.context.ContextBuilder`
    builds are per chain of intermediates: a handful.

    :ivar fallback: served for names without a certificate and clients
        without SNI (the master's :class:`CertifiedKey`).
    :ivar evictions: names dropped because the cache was full.
    """

    def __init__(self, fallback: CertifiedKey, size: int):
        self.fallback = fallback
        self.size = size
        self.evictions = 0
        self._held: collections.OrderedDict[str, ServedCertificate] = collections.OrderedDict()
        self._absent: collections.OrderedDict[str, None] = collections.OrderedDict()
        #: wildcard → names held (with a certificate or without) it covers.
        self._covered: dict[str, set[str]] = {}
        self._by_chain: weakref.WeakValueDictionary[bytes, ServedCertificate] = weakref.WeakValueDictionary()
        self._intermediates: dict[str, Intermediates] = {}

    # -- the SNI path ---------------------------------------------------------

    def lookup(self, server_name: str | None) -> Servable:
        if server_name is None:
            return self.fallback
        found = self._held.get(server_name)
        if found is None:
            return self.fallback
        self._held.move_to_end(server_name)
        return found

    def holds(self, server_name: str) -> bool:
        """Whether the master's answer for ``server_name`` is here (marked as just used)."""
        if server_name in self._held:
            self._held.move_to_end(server_name)
            return True
        if server_name in self._absent:
            self._absent.move_to_end(server_name)
            return True
        return False

    # -- ICertificateCache ------------------------------------------------------

    def get(self, name: str) -> ServedCertificate | None:
        return self._held.get(name.lower())

    def put(self, certified_key: Servable, names: Iterable[str] | None = None, quiet: bool = True) -> None:
        """Hold ``certified_key`` (converted to its served form) for ``names`` (default: its own names)."""
        served = (
            certified_key if isinstance(certified_key, ServedCertificate)
            else ServedCertificate.from_certified(certified_key)
        )
        for name in names if names is not None else served.names:
            self._store(name.lower(), served)

    def remove(self, name: str) -> None:
        self._forget(name.lower())

    def names(self) -> list[str]:
        return list(self._held)

    def __len__(self) -> int:
        return len(self._held)

    # -- from the master ---------------------------------------------------------

    def answer(self, certificates: list[dict], absent: list[str]) -> None:
        """
        Hold a :class:`channel.FetchCertificates` answer.

        :raises CertificateError: for an entry that does not parse (the
            others are held).
        """
        refused: CertificateError | None = None
        for entry in certificates:
            try:
                certified = self._decode(entry)
            except CertificateError as e:
                refused = e
                continue
            for name in entry["names"]:
                self._store(name, certified)
        for name in absent:
            self._store(name, None)
        if refused is not None:
            raise refused

    def changed(self, names: Iterable[str], certificates: Iterable[dict] = ()) -> list[str]:
        """
        The master's certificates under ``names`` changed; ``certificates``
        is its :class:`channel.FetchCertificates` answer for them now
        (:class:`channel.CertificatesChanged`). A name held that has an
        entry there is replaced from it at once; the other names whose
        answer may differ now are dropped: a name held the master has no
        certificate for now, and the names a changed wildcard covers that
        have no entry of their own (the master's answer for those may be
        an exact certificate the notice does not carry). Names not held
        are ignored (a notice never grows the cache), and only the entries
        for names held are decoded.

        :return: the names dropped that had a certificate or were known to
            have none (to fetch again).
        """
        entries = {name: entry for entry in certificates for name in entry["names"]}
        decoded: dict[int, ServedCertificate | None] = {}
        dropped = []
        seen: set[str] = set()
        for name in names:
            affected = [name] + sorted(self._covered.get(name, ())) if name.startswith("*.") else [name]
            for each in affected:
                if each in seen:
                    continue
                seen.add(each)
                if each not in self._held and each not in self._absent:
                    continue
                entry = entries.get(each)
                certified = None
                if entry is not None:
                    if id(entry) not in decoded:
                        try:
                            decoded[id(entry)] = self._decode(entry)
                        except CertificateError as e:
                            log.error("worker: certificate from the master refused: {error}", error=str(e))
                            decoded[id(entry)] = None
                    certified = decoded[id(entry)]
                if certified is not None:
                    self._replace(each, certified)
                elif self._forget(each):
                    dropped.append(each)
        return dropped

    def resize(self, size: int) -> None:
        """Hold at most ``size`` names of each kind from now on."""
        self.size = size
        self._trim(self._held)
        self._trim(self._absent)

    # -- inside --------------------------------------------------------------

    def _decode(self, entry: dict) -> ServedCertificate:
        # The master's answer (channel.encode_certificate) parsed straight
        # into the served form: the leaf and key by OpenSSL, the
        # intermediates once per CA. Nothing else of the entry is kept.
        chain_pem = entry["chain"]
        digest = hashlib.sha256(chain_pem.encode("ascii") + entry["key"].encode("ascii")).digest()
        served = self._by_chain.get(digest)
        if served is None:
            source = entry.get("source", "")
            end = chain_pem.find(_PEM_END)
            if end < 0:
                raise CertificateError(source, "no certificate found")
            end += len(_PEM_END)
            served = ServedCertificate.from_pem(
                chain_pem[:end].encode("ascii"),
                entry["key"].encode("ascii"),
                self._shared_intermediates(chain_pem[end:].strip(), source),
                source,
            )
            self._by_chain[digest] = served
        return served

    def _shared_intermediates(self, pem: str, source: str) -> Intermediates:
        # Every certificate of a CA carries the same intermediates: one
        # parsed copy for all of them (~1.1 KB a name less), and what the
        # shared contexts are found by. Keyed by their PEM (all but the
        # leaf); a handful, dropped when more appear.
        shared = self._intermediates.get(pem)
        if shared is None:
            try:
                parsed = x509.load_pem_x509_certificates(pem.encode("ascii")) if pem else []
            except ValueError as e:
                raise CertificateError(source, "no valid PEM certificate (%s)" % (e,)) from None
            if len(self._intermediates) >= _INTERMEDIATES_KEPT:
                self._intermediates.clear()
            shared = self._intermediates[pem] = Intermediates.of(parsed)
        return shared

    def _store(self, name: str, certified: ServedCertificate | None) -> None:
        self._forget(name)
        if certified is None:
            self._absent[name] = None
            self._trim(self._absent)
        else:
            self._held[name] = certified
            self._trim(self._held)
        wildcard = _wildcard_of(name)
        if wildcard is not None:
            self._covered.setdefault(wildcard, set()).add(name)

    def _replace(self, name: str, certified: ServedCertificate) -> None:
        # In place: the name keeps its place in the least recently used
        # order (a notice is no use of it).
        if name in self._held:
            self._held[name] = certified
        else:
            self._store(name, certified)

    def _forget(self, name: str) -> bool:
        if name in self._held:
            del self._held[name]
        elif name in self._absent:
            del self._absent[name]
        else:
            return False
        wildcard = _wildcard_of(name)
        if wildcard is not None:
            covered = self._covered.get(wildcard)
            if covered is not None:
                covered.discard(name)
                if not covered:
                    del self._covered[wildcard]
        return True

    def _trim(self, entries: collections.OrderedDict) -> None:
        while len(entries) > self.size:
            oldest = next(iter(entries))
            self._forget(oldest)
            self.evictions += 1


@implementer(IHandshakeGate)
class CertificateFetcher:
    """
    The worker's handshake gate: a handshake for a name the worker does not
    hold waits (without blocking anything else) until the master has
    answered :class:`channel.FetchCertificates`; with on-demand issuance on
    (``ask_master``), a name the master has no certificate for goes on to
    :class:`channel.AskCertificate` (the master's gate: one order per name)
    and is fetched again once that answers. Handshakes for a name being
    fetched wait for the same answer.

    :param cache: the worker's cache.
    :param call: ``(command, **arguments) -> Deferred``, the channel's
        ``callRemote``.
    :ivar ask_master: on-demand issuance is on (``WorkerSettings.ask_master``).
    :ivar fetches: names fetched from the master.
    """

    def __init__(self, cache: WorkerCertificateCache, call: Callable[..., Deferred]):
        self._cache = cache
        self._call = call
        self.ask_master = False
        self.fetches = 0
        self._waiting: dict[str, list[Deferred]] = {}
        self._asked: set[str] = set()

    def before_handshake(self, server_name: str | None) -> Deferred | None:
        if server_name is None or self._cache.holds(server_name):
            return None
        return self.wait_for(server_name)

    def wait_for(self, name: str) -> Deferred:
        """
        A Deferred firing once ``name`` has been fetched, and with
        ``ask_master`` asked for when the master has none (or once that
        failed: the handshake then gets the fallback); with
        :data:`GATE_CACHE_FILLED` when the master was not asked for an
        order (the handshake counts as not held), else ``None``.
        """
        waiter: Deferred = Deferred()
        if name in self._waiting:
            self._waiting[name].append(waiter)
        else:
            self._waiting[name] = [waiter]
            self._start([name])
        return waiter

    def refresh(self, changed: Iterable[str], certificates: Iterable[dict] = ()) -> None:
        """
        :class:`channel.CertificatesChanged`: replace the names held that
        the notice carries a certificate for, drop the other names
        affected and fetch them again in the background (never asking for
        an order: a certificate removed on purpose stays removed until a
        handshake asks for it).
        """
        dropped = [name for name in self._cache.changed(changed, certificates) if name not in self._waiting]
        # No more than the cache holds, and no answer larger than the cache:
        # a handshake waiting on a name of a group finds it still held.
        dropped = dropped[-self._cache.size :]
        for name in dropped:
            self._waiting[name] = []
        for group in channel.in_groups(dropped, min(channel.NAMES_PER_COMMAND, self._cache.size)):
            self._start(group)

    def _start(self, names: list[str]) -> None:
        self.fetches += len(names)
        fetched = self._call(channel.FetchCertificates, names=names)
        fetched.addCallback(self._fetched)
        fetched.addErrback(self._failed, names)
        fetched.addBoth(self._done, names)

    def _fetched(self, answer: dict) -> Deferred | None:
        try:
            self._cache.answer(answer["certificates"], [] if self.ask_master else answer["absent"])
        except CertificateError as e:
            log.error("worker: certificate from the master refused: {error}", error=str(e))
        if not self.ask_master:
            return None
        # The master has none: its gate decides (order, wait, backoff) for
        # the names a handshake waits for.
        wanted = [name for name in answer["absent"] if self._waiting.get(name)]
        if not wanted:
            return None
        self._asked.update(wanted)
        return gatherResults([self._ask(name) for name in wanted], consumeErrors=True)

    def _ask(self, name: str) -> Deferred:
        def answered(found: dict) -> Deferred | None:
            if not found["found"]:
                return None
            self.fetches += 1
            return self._call(channel.FetchCertificates, names=[name]).addCallback(
                lambda again: self._cache.answer(again["certificates"], [])
            )

        return self._call(channel.AskCertificate, name=name).addCallback(answered)

    def _failed(self, failure: Failure, names: list[str]) -> None:
        log.failure("worker: fetching {count} certificate(s) from the master failed", failure, count=len(names))

    def _done(self, _: object, names: list[str]) -> None:
        for name in names:
            result = None if name in self._asked else GATE_CACHE_FILLED
            self._asked.discard(name)
            for waiter in self._waiting.pop(name, ()):
                waiter.callback(result)
