"""
Answering tls-alpn-01 (RFC 8737) on the TLS listener.

A ClientHello whose ALPN list is exactly ``acme-tls/1`` is a CA validating
a challenge, never a client to proxy (RFC 8737 §3: the validation client
offers that protocol only, with the identifier as SNI). It gets a
self-signed certificate for that one name carrying the key authorization's
digest, the handshake negotiates ``acme-tls/1``, and the connection is
closed; with no challenge pending for the name it gets an alert.

The handshake is on kongacme's own OpenSSL binding where it is built
(:mod:`kongacme.tls.openssl`), with no session ticket at all (a validation
is never resumed; on pyOpenSSL, OpenSSL would send its default two), else
on pyOpenSSL.

The key authorization comes from a lookup (``name -> Deferred[str |
None]``): the issuing process's memory, then the shared storage, or, in a
worker, the master over the channel. Nothing here touches storage.
"""

from __future__ import annotations

import collections
import datetime
import hashlib
from typing import Any, Callable

import attrs
from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier
from OpenSSL import SSL
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.tls import openssl
from kongacme.tls.certs import CertifiedKey
from kongacme.tls.clienthello import ClientHello
from kongacme.tls.fallback import generate_self_signed
from kongacme.tls.session import PyOpenSSLSession, TLSSession

log = Logger()

#: The ALPN protocol of tls-alpn-01 validation (RFC 8737 §6.2).
ACME_TLS_1 = b"acme-tls/1"

#: id-pe-acmeIdentifier (RFC 8737 §6.1).
ID_PE_ACME_IDENTIFIER = ObjectIdentifier("1.3.6.1.5.5.7.1.31")

#: A fatal no_application_protocol(120) alert record (RFC 7301 §3.2): the
#: answer to ``acme-tls/1`` for a name with no pending challenge.
NO_APPLICATION_PROTOCOL_ALERT = b"\x15\x03\x03\x00\x02\x02\x78"

#: Challenge contexts kept at most (one per pending name and key
#: authorization; a pending challenge lives minutes).
CACHE_SIZE = 256

#: Lookups (storage reads, or questions to the master) running at once at
#: most: beyond it an ``acme-tls/1`` hello is refused at once, so a flood of
#: them cannot turn into a flood of storage reads. A CA validates a name
#: from a few vantage points, not hundreds.
MAX_LOOKUPS = 64

#: Seconds a lookup may take before the hello is refused (a lookup that
#: never answers must not hold a slot of MAX_LOOKUPS for good).
LOOKUP_TIMEOUT = 10.0

#: Seconds between two "no pending challenge" log lines.
REFUSAL_LOG_INTERVAL = 60.0

#: A challenge certificate's validity (days): the validation takes seconds.
VALIDITY_DAYS = 7


def is_challenge_hello(hello: ClientHello) -> bool:
    """
    Whether ``hello`` is a tls-alpn-01 validation: its ALPN list is exactly
    ``acme-tls/1`` (RFC 8737 §3: "the only protocol"). A client offering it
    beside ``h2`` or others is an ordinary client.
    """
    return hello.alpn_offered == (ACME_TLS_1,)


def acme_identifier_value(key_authorization: str) -> bytes:
    """
    The DER value of the id-pe-acmeIdentifier extension: an ASN.1 OCTET
    STRING holding the SHA-256 digest of the key authorization (RFC 8737
    §3, ``Authorization ::= OCTET STRING (SIZE (32))``).
    """
    digest = hashlib.sha256(key_authorization.encode("ascii")).digest()
    return b"\x04\x20" + digest


def challenge_certificate(name: str, key_authorization: str, now: datetime.datetime) -> CertifiedKey:
    """
    The tls-alpn-01 certificate for ``name`` (RFC 8737 §3): self-signed
    (ECDSA P-256), a subjectAltName with that one dNSName, and the critical
    id-pe-acmeIdentifier extension.

    :param name: the identifier (as the CA sends it in SNI).
    :param key_authorization: ``<token>.<account key thumbprint>``.
    :param now: the start of its validity.
    """
    acme_identifier = x509.UnrecognizedExtension(ID_PE_ACME_IDENTIFIER, acme_identifier_value(key_authorization))
    return generate_self_signed(name, now, days=VALIDITY_DAYS, extensions=[(acme_identifier, True)])


def _select_acme_tls(connection: SSL.Connection, offered: list[bytes]) -> Any:
    return ACME_TLS_1 if ACME_TLS_1 in offered else SSL.NO_OVERLAPPING_PROTOCOLS


def challenge_context(certified: CertifiedKey) -> Any:
    """
    A server context presenting ``certified`` and negotiating
    ``acme-tls/1``, TLS 1.2 or later (RFC 8737 §4): the own binding's,
    sending no session ticket, where it is built, else pyOpenSSL's
    (:func:`challenge_session` makes a session of either).

    :raises ssl.SSLError: if the own binding refuses the certificate.
    """
    if openssl.compiled is not None:
        return openssl.pem_context(certified.chain_pem(), certified.key_pem(), (ACME_TLS_1,), session_tickets=False)
    ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
    ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
    ctx.use_certificate(certified.chain[0])
    ctx.use_privatekey(certified.key)
    ctx.set_alpn_select_callback(_select_acme_tls)
    return ctx


def challenge_session(context: Any) -> TLSSession:
    """A server session on ``context`` (:func:`challenge_context`'s)."""
    if isinstance(context, SSL.Context):
        return PyOpenSSLSession(SSL.Connection(context, None), None)
    assert openssl.compiled is not None
    return openssl.compiled.Session(context)  # type: ignore[no-any-return]


@implementer(IHandshakeListener)
class CloseAfterHandshake(Protocol):
    """
    What a tls-alpn-01 connection is connected to instead of the proxy:
    the CA only needs the handshake, so the connection ends right after it.
    """

    def handshakeCompleted(self) -> None:
        self.transport.loseConnection()


@attrs.define
class ChallengeResponder:
    """
    The TLS listener's tls-alpn-01 answers: for an ``acme-tls/1`` hello,
    the TLS session presenting the challenge certificate
    (:func:`challenge_session`), or ``None`` (no pending challenge: the
    listener sends an alert).

    :ivar _lookup: server name → ``Deferred`` of the pending key
        authorization, or ``None``.
    :ivar _clock: "now" for the certificates and the log limit.
    :ivar _max_lookups: lookups running at once at most.
    :ivar answered: connections given a challenge certificate.
    :ivar refused: ``acme-tls/1`` hellos with no pending challenge (or
        over ``max_lookups``).
    """

    _lookup: Callable[[str], Deferred]
    _clock: IReactorTime
    _max_lookups: int = MAX_LOOKUPS
    _in_flight: int = attrs.field(default=0, init=False)
    _contexts: collections.OrderedDict = attrs.field(factory=collections.OrderedDict, init=False)
    _last_refusal_log: float | None = attrs.field(default=None, init=False)
    _unlogged: int = attrs.field(default=0, init=False)
    answered: int = attrs.field(default=0, init=False)
    refused: int = attrs.field(default=0, init=False)

    def session_for(self, hello: ClientHello, peer: str = "?") -> Deferred:
        """
        ``Deferred`` of the TLS session answering ``hello`` (an
        ``acme-tls/1`` hello), or of ``None`` when no challenge is pending
        for its server name (or it has none: RFC 8737 §3 requires SNI).
        """
        name = hello.server_name
        if name is None:
            return succeed(self._refuse("(no SNI)", peer))
        if self._in_flight >= self._max_lookups:
            return succeed(self._refuse(name + " (too many lookups at once)", peer))
        self._in_flight += 1
        waiting = self._lookup(name)
        waiting.addTimeout(LOOKUP_TIMEOUT, self._clock)
        waiting.addBoth(self._looked_up)
        waiting.addCallback(self._answer, name, peer)
        waiting.addErrback(self._lookup_failed, name, peer)
        return waiting

    def _looked_up(self, result: Any) -> Any:
        self._in_flight -= 1
        return result

    def _answer(self, key_authorization: str | None, name: str, peer: str) -> TLSSession | None:
        if not key_authorization:
            self._forget(name)
            return self._refuse(name, peer)
        ctx = self.context_for(name, key_authorization)
        self.answered += 1
        return challenge_session(ctx)

    def context_for(self, name: str, key_authorization: str) -> Any:
        """The context for ``(name, key_authorization)``, built once while pending."""
        entry = (name, key_authorization)
        ctx = self._contexts.get(entry)
        if ctx is not None:
            self._contexts.move_to_end(entry)
            return ctx
        self._forget(name)
        now = datetime.datetime.fromtimestamp(self._clock.seconds(), datetime.timezone.utc)
        ctx = challenge_context(challenge_certificate(name, key_authorization, now))
        self._contexts[entry] = ctx
        while len(self._contexts) > CACHE_SIZE:
            self._contexts.popitem(last=False)
        return ctx

    def _forget(self, name: str) -> None:
        # A challenge no longer pending (or replaced) needs no context.
        for entry in [entry for entry in self._contexts if entry[0] == name]:
            del self._contexts[entry]

    def _refuse(self, name: str, peer: str) -> None:
        self.refused += 1
        now = self._clock.seconds()
        if self._last_refusal_log is not None and now - self._last_refusal_log < REFUSAL_LOG_INTERVAL:
            self._unlogged += 1
            return None
        self._last_refusal_log = now
        unlogged, self._unlogged = self._unlogged, 0
        log.info(
            "TLS: acme-tls/1 from {peer} for {name}: no tls-alpn-01 challenge pending, refused"
            " ({unlogged} more refused since the last such line)",
            peer=peer,
            name=name,
            unlogged=unlogged,
        )
        return None

    def _lookup_failed(self, failure: Any, name: str, peer: str) -> None:
        if failure.check(TimeoutError):
            log.warn("tls-alpn-01: looking up the challenge for {name} took over {timeout} s", name=name,
                     timeout=LOOKUP_TIMEOUT)
        else:
            log.failure("tls-alpn-01: looking up the challenge for {name} failed", failure, name=name)
        return self._refuse(name, peer)
