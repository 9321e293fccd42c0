"""
Contexts for the busiest certificates (:class:`StdContexts`): one per
certificate and route ALPN list, carrying the leaf, its intermediates and
the key, with the same profile as the pyOpenSSL contexts
(:mod:`kongacme.tls.context`). They are kongacme's own OpenSSL binding's
where it is built (:mod:`kongacme.tls.openssl`, which also takes TLS 1.2
clients), else the standard library's ``ssl``, described here.

Why a second binding: per kept-alive request a relay makes four TLS calls,
and the standard library's are C methods where pyOpenSSL's are Python over
cffi; the bare relay loop did 0.78× HAProxy's requests per CPU-second on
pyOpenSSL and 0.96× on the standard library, with handshakes a little
ahead too (bench/RESULTS.md, "The standard library's ssl for busy
certificates"). Its contexts cost ~1 ms to build and ~25 KB each, and
cannot take a leaf per connection, so only certificates that have served
:data:`~kongacme.tls.context.PROMOTE_AFTER` connections get one, at most
:data:`STD_CONTEXTS` (least recently used out); the others stay on
pyOpenSSL's shared contexts. Only clients offering TLS 1.3 come here
(:meth:`~kongacme.tls.context.ContextBuilder.session_for`): the standard
library cannot turn off OpenSSL's server session cache, which keeps no
TLS 1.3 session but would keep every TLS 1.2 one without a ticket.

What the profile keeps and what differs, as the standard library allows:

- TLS 1.2 and 1.3, the same TLS 1.2 suites (Mozilla "intermediate"), the
  client's preference (the standard library's default is the server's),
  no compression, no renegotiation, a FIN without close_notify read as end
  of stream;
- session tickets as ``session_tickets`` says: **one** per TLS 1.3
  handshake, or none at all (``num_tickets``, which pyOpenSSL cannot set);
  keys rotated by rebuilding the context, as the shared contexts are;
- the TLS 1.3 suites and key-exchange groups are OpenSSL's defaults (the
  standard library has no call to set them): the same three TLS 1.3
  suites, and X25519, P-256, P-384 among more groups (X448, P-521, and the
  finite-field ones for clients that ask only for those).
"""

from __future__ import annotations

import os
import ssl
import weakref
from typing import TYPE_CHECKING, Any, Callable, Optional

from OpenSSL import crypto
from twisted.logger import Logger

from kongacme.tls import openssl
from kongacme.tls.openssl import openssl_certificate, openssl_context, pem, shared_openssl_context
from kongacme.tls.owned import OwnedCache, fresh
from kongacme.tls.session import BusySession, StdSession

if TYPE_CHECKING:
    from kongacme.tls.context import ServedCertificate

log = Logger()

#: Most certificate/ALPN pairs with a standard-library context (least
#: recently used first out): about 25 KB each.
STD_CONTEXTS = 64

#: On the own binding, the connection of a certificate from which on it is
#: served from its chain's shared context (:meth:`StdContexts.session_for`)
#: until it is busy: its first, so that every connection gets the ticket
#: count kongacme sets (pyOpenSSL cannot set it: OpenSSL's default two).
#: Parsing the leaf and key (~0.25 ms, once) then falls on a certificate's
#: first connection rather than its second (bench/RESULTS.md, session 24).
CERTIFICATE_AFTER = 1

#: Most certificates held as the own binding's objects for the shared
#: contexts (least recently used first out): about 8.5 KB each
#: (bench/certificate_memory.py). Once it is full, a certificate is kept
#: only from its ``promote_after``-th connection, not
#: :data:`CERTIFICATE_AFTER`: with more names in use than this, each kept
#: pushes another out. Its connections before that are served from the
#: objects made for each (~0.2-0.5 ms: bench/RESULTS.md, session 24), so
#: that they get the ticket count configured, or, where pyOpenSSL sends
#: that count anyway (``OPENSSL_CONF``, :func:`kongacme.tls.tickets.pyopenssl_tickets`),
#: on pyOpenSSL, which costs less (past the uses counted,
#: ``kongacme.tls.owned.COUNTED`` names, they are never kept).
OWN_CERTIFICATES = 1024

#: How long a certificate's own-binding objects are good for: as long as it is held.
_KEPT = float("inf")


def pyopenssl_tickets() -> int:
    """:func:`kongacme.tls.tickets.pyopenssl_tickets` (imported when first needed: it builds on this module)."""
    from kongacme.tls.tickets import pyopenssl_tickets as counted

    return counted()


def _pem(served: "ServedCertificate") -> bytes:
    """The leaf, its intermediates and the key, as one PEM file."""
    chain, key = pem(served)
    return chain + key


def std_context(served: "ServedCertificate", alpn: tuple[bytes, ...], session_tickets: bool) -> ssl.SSLContext:
    """
    A standard-library server context presenting ``served`` and choosing
    among ``alpn`` (server's order, no ALPN on no overlap, as
    :func:`kongacme.tls.context._select_alpn`).

    The key goes to OpenSSL through an anonymous memory file
    (``memfd_create``): ``load_cert_chain`` reads only from a path, and the
    key is never written to disk.

    :raises ssl.SSLError: if OpenSSL refuses the chain or key.
    :raises UnicodeError: for an ALPN protocol that is not ASCII.
    """
    from kongacme.tls.context import INTERMEDIATE_TLS12_CIPHERS

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.maximum_version = ssl.TLSVersion.TLSv1_3
    context.set_ciphers(INTERMEDIATE_TLS12_CIPHERS.decode("ascii"))
    options = context.options | ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION | ssl.OP_IGNORE_UNEXPECTED_EOF
    options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if not session_tickets:
        options |= ssl.OP_NO_TICKET
    context.options = options
    context.num_tickets = 1 if session_tickets else 0
    if alpn:
        context.set_alpn_protocols([protocol.decode("ascii") for protocol in alpn])
    fd = os.memfd_create("kongacme-certificate", os.MFD_CLOEXEC)
    try:
        os.write(fd, _pem(served))
        context.load_cert_chain("/proc/self/fd/%d" % (fd,))
    finally:
        os.close(fd)
    return context


class StdContexts:
    """
    The contexts of busy certificates, by certificate and ALPN list, on
    kongacme's own OpenSSL binding where it is built
    (:mod:`kongacme.tls.openssl`), else on the standard library's ``ssl``
    (:attr:`binding`). A certificate is counted per connection
    (:meth:`session_for` gives None until it has served ``promote_after``,
    on the standard library); its contexts go with it (weakly held), and
    are rebuilt after the ticket key rotation (new ticket keys).

    On the own binding a certificate that is not busy yet is served from
    its :attr:`certificate_after`-th connection on a context shared by its
    chain and ALPN list, with its leaf and key as the binding's objects
    (held while it is, at most :attr:`certificate_limit`); the shared
    contexts are rotated like the others.

    :param seconds: the clock.
    :ivar limit: the most contexts of a certificate's own kept (0: none).
        With ``certificate_limit`` 0 too, every connection stays on pyOpenSSL.
    """

    def __init__(self, seconds: Callable[[], float], promote_after: int, limit: int = STD_CONTEXTS):
        self._seconds = seconds
        self.promote_after = promote_after
        #: (id(served), alpn) → its context, while served lives (and the
        #: connections counted, until it has one).
        self._contexts: OwnedCache[Any] = OwnedCache(limit)
        #: Certificates OpenSSL refused here: they stay on pyOpenSSL.
        self._refused: "weakref.WeakSet[ServedCertificate]" = weakref.WeakSet()
        self._binding = "openssl" if openssl.compiled is not None else "stdlib"
        #: The own binding's shared contexts: (chain key, alpn) → (context, built at).
        self._shared: dict[tuple[bytes, tuple[bytes, ...]], tuple[Any, float]] = {}
        #: id(served) → its leaf and key as the own binding's objects, while served lives.
        self._certificates: OwnedCache[Any] = OwnedCache(OWN_CERTIFICATES)
        #: A certificate's connections from this one on go to a shared context.
        self.certificate_after = CERTIFICATE_AFTER

    @property
    def binding(self) -> str:
        """
        ``"openssl"`` (:mod:`kongacme.tls._openssl`, the default where it is
        built) or ``"stdlib"`` (the standard library's ``ssl``); setting it
        drops the contexts built so far.
        """
        return self._binding

    @binding.setter
    def binding(self, binding: str) -> None:
        if binding not in ("openssl", "stdlib"):
            raise ValueError("no busy-certificate binding %r" % (binding,))
        if binding == "openssl" and openssl.compiled is None:
            raise ValueError("kongacme.tls._openssl is not built here")
        if binding != self._binding:
            self._binding = binding
            self.clear()

    @property
    def tls12(self) -> bool:
        """
        Clients not offering TLS 1.3 may come here: only to the own
        binding, whose contexts keep no server session cache.
        """
        return self._binding == "openssl"

    def session_for(
        self, served: "ServedCertificate", alpn: tuple[bytes, ...], session_tickets: bool, rotation: float
    ) -> Optional[BusySession]:
        """
        A session on ``served``'s own context for ``alpn``, or None while
        it is not busy (yet).

        :param session_tickets: :attr:`ContextBuilder.session_tickets`.
        :param rotation: seconds a context (its ticket keys) is used.
        """
        key = (id(served), alpn)
        now = self._seconds()
        context, found = self._contexts.get(key, served, now, rotation)
        if context is None and (found or (self.limit and self._contexts.busy(key, self.promote_after))):
            # Busy now, or its ticket keys rotate.
            context = self._build(served, alpn, key, session_tickets)
        if context is None:
            if self._binding == "openssl":
                return self._shared_session(served, alpn, session_tickets, rotation, now)
            return None
        if self._binding == "openssl":
            return openssl.compiled.Session(context)  # type: ignore[union-attr]
        return StdSession(context)

    def _shared_session(
        self, served: "ServedCertificate", alpn: tuple[bytes, ...], session_tickets: bool, rotation: float,
        now: float,
    ) -> Optional[BusySession]:
        """
        A session of the own binding on ``served``'s chain's shared context,
        with its leaf and key (held from its :attr:`certificate_after`-th
        connection on; from its ``promote_after``-th while as many
        certificates as :attr:`certificate_limit` are held, and made for
        each connection before that unless pyOpenSSL sends as many
        tickets), or None (then pyOpenSSL's shared context serves it).
        """
        certificate, _ = self._certificates.get(id(served), served, now, _KEPT)
        if certificate is None:
            if not self.certificate_limit or served in self._refused:
                return None
            full = len(self._certificates) >= self.certificate_limit
            keep = self._certificates.busy(id(served), self.promote_after if full else self.certificate_after)
            if not keep and (not full or pyopenssl_tickets() == (1 if session_tickets else 0)):
                return None
            try:
                certificate = openssl_certificate(served)
            except (ssl.SSLError, crypto.Error, ValueError, TypeError) as e:  # crypto.Error: a key pyOpenSSL cannot dump
                self._refuse(served, "it", e)
                return None
            if keep:
                self._certificates.put(id(served), served, certificate, now)
        try:
            shared = fresh(self._shared, (served.chain.key, alpn), now, rotation,
                           lambda: shared_openssl_context(served.chain, alpn, session_tickets))
        except (ssl.SSLError, ValueError) as e:
            self._refuse(served, "its chain", e)
            return None
        return openssl.compiled.Session(shared, certificate)  # type: ignore[union-attr]

    def _refuse(self, served: "ServedCertificate", what: str, error: Exception) -> None:
        """The binding refused ``served`` (``what`` of it): it stays on pyOpenSSL, said once."""
        self._refused.add(served)
        log.warn("TLS: {served!r} stays on pyOpenSSL: the {binding} binding refused {what} ({error})",
                 served=served, binding=self._binding, what=what, error=error)

    def _build(
        self, served: "ServedCertificate", alpn: tuple[bytes, ...], key: tuple[int, tuple[bytes, ...]],
        session_tickets: bool,
    ) -> Any:
        if served in self._refused:
            return None
        build = openssl_context if self._binding == "openssl" else std_context
        try:
            context = build(served, alpn, session_tickets)
        except (ssl.SSLError, OSError, UnicodeError, ValueError, AttributeError) as e:
            # (AttributeError: an os without memfd_create, which is Linux's.)
            self._contexts.discard(key)
            self._refuse(served, "it", e)
            return None
        self._contexts.put(key, served, context, self._seconds())
        return context

    @property
    def limit(self) -> int:
        return self._contexts.limit

    @limit.setter
    def limit(self, limit: int) -> None:
        self._contexts.limit = limit

    @property
    def certificate_limit(self) -> int:
        """The most certificates held as the own binding's objects (0: none, no shared contexts)."""
        return self._certificates.limit

    @certificate_limit.setter
    def certificate_limit(self, limit: int) -> None:
        self._certificates.limit = limit
        self._certificates.trim()

    def shared_contexts(self) -> int:
        """How many shared contexts of the own binding are memoised."""
        return len(self._shared)

    def certificates(self) -> int:
        """How many certificates are held as the own binding's objects."""
        return len(self._certificates)

    def clear(self) -> None:
        """Drop every context (settings changed)."""
        self._contexts.clear()
        self._shared.clear()
        self._certificates.clear()

    def __len__(self) -> int:
        return len(self._contexts)
