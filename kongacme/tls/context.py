"""
OpenSSL server contexts, shared by every certificate with the same
intermediates, with Mozilla's "intermediate" profile, rebuilt when their
ticket keys are due for rotation; each connection gets its own leaf and key,
except on the busiest certificates, which get a context of their own.
"""

from __future__ import annotations

import datetime
import hashlib
import re
import warnings
import weakref
from typing import Sequence, Union

import attrs
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL, crypto
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kongacme.errors import CertificateError
from kongacme.tls.certs import CertifiedKey, certificate_names
from kongacme.tls.owned import OwnedCache, fresh
from kongacme.tls.session import PyOpenSSLSession, TLSSession
from kongacme.tls.stdlib import StdContexts

# Mozilla server-side TLS guidelines, "intermediate" (v5.7): TLS 1.2 and
# 1.3, forward-secret AEAD suites only, client's cipher preference.
INTERMEDIATE_TLS12_CIPHERS = (
    b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
    b"ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
    b"ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
)
INTERMEDIATE_TLS13_CIPHERSUITES = (
    b"TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"
)
INTERMEDIATE_CURVES = b"X25519:prime256v1:secp384r1"

# Not every pyOpenSSL exposes these names.
_OP_NO_RENEGOTIATION = getattr(SSL, "OP_NO_RENEGOTIATION", 0x40000000)
_MODE_RELEASE_BUFFERS = getattr(SSL, "MODE_RELEASE_BUFFERS", 0x00000010)

# pyOpenSSL has no public call for a list of groups (``set_tmp_ecdh``
# takes one curve): the profile's list is set through its cffi binding,
# pyOpenSSL's one private part kongacme uses (once per context, never per
# connection). A pyOpenSSL without it still works, on OpenSSL's default
# groups (X25519 first as well), with one warning (_set_groups).
try:
    from OpenSSL._util import lib as _lib
except ImportError:  # every pyOpenSSL release so far has it
    _lib = None
_groups_warned = False
_log = Logger()
_OP_IGNORE_UNEXPECTED_EOF = getattr(SSL, "OP_IGNORE_UNEXPECTED_EOF", 0x80)

# Each connection is handed the leaf and key already as OpenSSL objects
# (ServedCertificate): pyOpenSSL deprecates passing its own X509 and PKey,
# but converting cryptography's objects on every connection costs ~100 us of
# the ~1.2 ms a handshake takes (bench/tls_memory.py), and calling
# SSL_use_certificate on their pointers ourselves saves only ~4 us for
# depending on pyOpenSSL's private attributes (bench/RESULTS.md issue 11,
# "Memory, round 3"). Silenced for this module's calls only.
warnings.filterwarnings(
    "ignore", message=r"Passing pyOpenSSL (X509|PKey) objects is deprecated", category=DeprecationWarning,
    module=re.escape(__name__),
)


def _set_groups(ctx: SSL.Context) -> None:
    """The profile's key exchange groups (:data:`INTERMEDIATE_CURVES`) on ``ctx``, where pyOpenSSL lets them be set."""
    global _groups_warned
    set_list = getattr(_lib, "SSL_CTX_set1_curves_list", None)
    handle = getattr(ctx, "_context", None)
    if set_list is None or handle is None:
        if not _groups_warned:
            _groups_warned = True
            _log.warn(
                "TLS: this pyOpenSSL offers no way to set the key exchange groups; "
                "OpenSSL's defaults are used instead of {groups}",
                groups=INTERMEDIATE_CURVES.decode("ascii"),
            )
        return
    if not set_list(handle, INTERMEDIATE_CURVES):
        raise RuntimeError("OpenSSL refused the curve list %r" % (INTERMEDIATE_CURVES,))


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes:
    """
    Pick the first protocol of the route's list that the client offered.

    The route's list travels on the connection's app data (the TLS
    protocol's ``alpn_allowed``). Answering NO_OVERLAPPING_PROTOCOLS
    rather than failing keeps clients that offer only unknown protocols
    working (RFC 7301 §3.2 allows the server to ignore ALPN).
    """
    protocol = connection.get_app_data()
    allowed = getattr(protocol, "alpn_allowed", ())
    for candidate in allowed:
        if candidate in offered:
            return candidate
    return SSL.NO_OVERLAPPING_PROTOCOLS


def chain_key(certified: CertifiedKey) -> bytes:
    """What the contexts are shared by: a digest of ``certified``'s intermediates (empty for none)."""
    return _digest(certified.chain[1:])


def _digest(intermediates: Sequence[x509.Certificate]) -> bytes:
    if not intermediates:
        return b""
    digest = hashlib.sha256()
    for certificate in intermediates:
        digest.update(certificate.public_bytes(Encoding.DER))
    return digest.digest()


@attrs.frozen
class Intermediates:
    """
    A chain of intermediates, parsed once for every certificate sent with
    it (a few per CA), and what the contexts are shared by.

    :ivar certificates: the intermediates, in the order they are sent.
    :ivar key: :func:`chain_key` of a certificate with these intermediates.
    """

    certificates: tuple[x509.Certificate, ...]
    key: bytes

    @classmethod
    def of(cls, certificates: Sequence[x509.Certificate]) -> "Intermediates":
        return cls(tuple(certificates), _digest(certificates))


@attrs.frozen(eq=False, weakref_slot=True)
class ServedCertificate:
    """
    One certificate as a connection needs it and no more: the leaf and key
    as OpenSSL objects (what ``SSL_use_certificate`` and
    ``SSL_use_PrivateKey`` take, so a handshake converts nothing) and the
    shared :class:`Intermediates`. What a worker holds per certificate
    (:mod:`kongacme.workers.certcache`): a :class:`CertifiedKey` is the same
    leaf and key again as ``cryptography`` objects, ~5.6 KB a name.

    The names and expiry are read from the OpenSSL leaf when asked for
    (logs, tests): nothing on the TLS path asks.

    Compared by identity, like :class:`CertifiedKey`.
    """

    leaf: crypto.X509
    key: crypto.PKey
    chain: Intermediates

    @classmethod
    def from_pem(cls, leaf_pem: bytes, key_pem: bytes, chain: Intermediates, source: str = "") -> "ServedCertificate":
        """
        Parse a PEM leaf and PEM private key straight into OpenSSL objects,
        checking what :func:`kongacme.tls.certs.load_certified_key` checks
        (an RSA or ECDSA key that belongs to the leaf).

        :raises CertificateError: naming ``source`` and what is wrong.
        """
        try:
            leaf = crypto.load_certificate(crypto.FILETYPE_PEM, leaf_pem)
        except crypto.Error as e:
            raise CertificateError(source, "no valid PEM certificate (%s)" % (e,)) from None
        try:
            key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
        except (crypto.Error, TypeError) as e:
            raise CertificateError(source, "no valid unencrypted PEM private key (%s)" % (e,)) from None
        if key.type() not in (crypto.TYPE_RSA, crypto.TYPE_EC):
            raise CertificateError(source, "only RSA and ECDSA keys are supported")
        if crypto.dump_publickey(crypto.FILETYPE_ASN1, key) != crypto.dump_publickey(
            crypto.FILETYPE_ASN1, leaf.get_pubkey()
        ):
            raise CertificateError(source, "private key does not match the certificate")
        return cls(leaf, key, chain)

    @classmethod
    def from_certified(cls, certified: CertifiedKey) -> "ServedCertificate":
        """``certified`` converted (once: ~100 us)."""
        return cls(
            crypto.X509.from_cryptography(certified.chain[0]),
            crypto.PKey.from_cryptography_key(certified.key),
            Intermediates.of(certified.chain[1:]),
        )

    @property
    def names(self) -> tuple[str, ...]:
        """The leaf's DNS names (:attr:`CertifiedKey.names`)."""
        return certificate_names(self.leaf.to_cryptography())

    @property
    def not_after(self) -> datetime.datetime:
        return self.leaf.to_cryptography().not_valid_after_utc

    @property
    def fingerprint(self) -> str:
        """SHA-1 fingerprint in Kong's format (:attr:`CertifiedKey.fingerprint`)."""
        return self.leaf.digest("sha1").decode("ascii")

    def __repr__(self) -> str:
        return "<ServedCertificate %s until %s>" % (",".join(self.names) or "?", self.not_after.isoformat())


#: The most certificates with a context of their own (least recently used
#: first out): about 15 KB each.
HOT_CONTEXTS = 64

#: Connections a certificate serves from its chain's shared context before
#: it gets a context of its own: one visit does not pay for a context
#: (~120 us to build), a busy name does within a few connections.
PROMOTE_AFTER = 8

#: What :meth:`ContextBuilder.connection_for` serves.
Servable = Union[CertifiedKey, ServedCertificate]


class ContextBuilder:
    """
    Server connections for :class:`ServedCertificate` objects (a
    :class:`CertifiedKey` is converted once and the served form kept as
    long as it is): one ``SSL.Context``
    per distinct chain of intermediates (a handful), carrying them as its
    extra chain certificates, and each connection given its own leaf and
    key. OpenSSL sends the context's extra certificates after a leaf that
    has no chain of its own (``ssl_add_cert_chain``), so clients get the
    full chain.

    A context costs ~15-26 KB of OpenSSL memory, a leaf and key as OpenSSL
    objects ~8 KB: sharing contexts halves what each name held costs a
    worker (bench/tls_memory.py).

    Giving each connection its leaf and key costs ~20 us of a ~650 us
    handshake, though (in memory: bench/RESULTS.md, "Fewer segments, hot
    contexts"): a certificate that has served
    :data:`PROMOTE_AFTER` connections gets a context of its own carrying
    them, for its later connections, for up to :data:`HOT_CONTEXTS`
    certificates (the least recently used goes first). Such a context is
    rotated like the shared ones, and goes with its certificate.

    OpenSSL keeps session-ticket keys per context, so rebuilding a context
    is how its ticket keys rotate: a context older than
    ``ticket_key_rotation`` seconds is replaced on its next use (clients
    holding an old ticket do a full handshake once). Names served under
    one chain share its ticket keys, as every virtual host of one HAProxy
    or nginx does: a ticket is only offered again by a client for the name
    it was issued for (RFC 8446 §4.6.1 has the client check the name), and
    its binder covers the ClientHello with that name (§4.2.11.2).

    :param clock: source of "now" for rotation.
    :param session_tickets: issue session tickets (stateless resumption).
    :param ticket_key_rotation: seconds a context (and its ticket keys) is
        used before it is rebuilt.
    """

    log = Logger()

    def __init__(self, clock: IReactorTime, session_tickets: bool = True, ticket_key_rotation: float = 43200.0):
        self._clock = clock
        self.session_tickets = session_tickets
        self.ticket_key_rotation = ticket_key_rotation
        #: chain key → (context, built at): a handful, for the chains in use.
        self._contexts: dict[bytes, tuple[SSL.Context, float]] = {}
        #: CertifiedKey → its served form, held as long as the certificate.
        self._served: "weakref.WeakKeyDictionary[CertifiedKey, ServedCertificate]" = weakref.WeakKeyDictionary()
        #: id(ServedCertificate) → its own context, while it lives (and the
        #: connections served from a shared context, until it has one).
        self._hot: OwnedCache[SSL.Context] = OwnedCache(HOT_CONTEXTS)
        self.promote_after = PROMOTE_AFTER
        #: Busy certificates on the standard library's ssl (session_for).
        self.std = StdContexts(clock.seconds, PROMOTE_AFTER)

    def served(self, certified: Servable) -> ServedCertificate:
        """``certified``'s served form (a :class:`CertifiedKey` is converted once, and kept as long as it is)."""
        if isinstance(certified, ServedCertificate):
            return certified
        served = self._served.get(certified)
        if served is None:
            served = self._served[certified] = ServedCertificate.from_certified(certified)
        return served

    def _context(self, chain: Intermediates) -> SSL.Context:
        return fresh(self._contexts, chain.key, self._clock.seconds(), self.ticket_key_rotation,
                     lambda: self.build(chain.certificates))

    def context_for(self, certified: Servable) -> SSL.Context:
        """
        The context ``certified``'s connections start from (shared by the
        certificates with the same intermediates), built now if needed. It
        carries no leaf: :meth:`connection_for` adds it.
        """
        return self._context(self.served(certified).chain)

    def connection_for(self, certified: Servable) -> SSL.Connection:
        """
        A new server-side ``SSL.Connection`` (no socket: memory BIOs) that
        will present ``certified``. The one place a connection gets its
        certificate: the TLS pump does not know how they are attached.

        :raises SSL.Error: if the key does not belong to the leaf (OpenSSL
            checks it as it takes the key).
        """
        served = self.served(certified)
        key = id(served)
        hot, found = self._hot.get(key, served, self._clock.seconds(), self.ticket_key_rotation)
        if hot is not None:
            return SSL.Connection(hot, None)
        if found:
            return SSL.Connection(self._promote(served, key), None)  # its ticket keys rotate
        if self.hot_limit and self._hot.busy(key, self.promote_after):
            return SSL.Connection(self._promote(served, key), None)
        connection = SSL.Connection(self._context(served.chain), None)
        # The leaf first: OpenSSL checks the key against it.
        connection.use_certificate(served.leaf)
        connection.use_privatekey(served.key)
        return connection

    def session_for(self, certified: Servable, alpn: tuple[bytes, ...], owner: object, tls13: bool = True) -> TLSSession:
        """
        A session presenting ``certified`` with the route's ``alpn`` (for
        the lean engine's relay and the Twisted path's pump alike): once the
        certificate is busy (:class:`~kongacme.tls.stdlib.StdContexts`), on
        kongacme's own OpenSSL binding where it is built, else on the
        standard library's ssl for a client offering TLS 1.3 (``tls13``);
        otherwise a pyOpenSSL connection (:meth:`connection_for`: the shared
        context, or the certificate's own hot one) with ``owner`` as its app
        data.

        Only TLS 1.3 goes to the standard library: its contexts keep
        OpenSSL's server session cache, which the standard library cannot
        turn off, and a TLS 1.2 session without a ticket would be kept there
        (~1.5 KB each, up to 20,480 per context); a TLS 1.3 session never is.
        The own binding's contexts have no cache, so both versions go there.

        :raises SSL.Error: if the key does not belong to the leaf.
        """
        served = self.served(certified)
        if tls13 or self.std.tls12:
            session = self.std.session_for(served, alpn, self.session_tickets, self.ticket_key_rotation)
            if session is not None:
                return session
        return PyOpenSSLSession(self.connection_for(served), owner)

    def own_context(self, certified: Servable) -> SSL.Context:
        """
        A fresh context of ``certified``'s own, carrying its leaf and key
        and sending its intermediates (not memoised).

        :raises SSL.Error: if the key does not belong to the leaf.
        """
        served = self.served(certified)
        context = self.build(served.chain.certificates)
        # The leaf first: OpenSSL checks the key against it.
        context.use_certificate(served.leaf)
        context.use_privatekey(served.key)
        return context

    def _promote(self, served: ServedCertificate, key: int) -> SSL.Context:
        """A context of ``served``'s own (new, or rotated), memoised among the hot ones."""
        context = self.own_context(served)
        self._hot.put(key, served, context, self._clock.seconds())
        return context

    @property
    def hot_limit(self) -> int:
        """The most certificates with a pyOpenSSL context of their own (0: none)."""
        return self._hot.limit

    @hot_limit.setter
    def hot_limit(self, limit: int) -> None:
        self._hot.limit = limit

    def forget_all(self) -> None:
        """Drop every context (settings changed); the next connection builds anew."""
        self._contexts.clear()
        self._hot.clear()
        self.std.clear()

    def __len__(self) -> int:
        """The :class:`CertifiedKey` objects held converted (as long as something else holds them)."""
        return len(self._served)

    def contexts(self) -> int:
        """How many shared contexts are memoised."""
        return len(self._contexts)

    def hot_contexts(self) -> int:
        """How many certificates have a context of their own."""
        return len(self._hot)

    def build(self, intermediates: Sequence[x509.Certificate] = ()) -> SSL.Context:
        """
        A fresh server context without a leaf, sending ``intermediates``
        after each connection's leaf (not memoised).
        """
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_cipher_list(INTERMEDIATE_TLS12_CIPHERS)
        ctx.set_tls13_ciphersuites(INTERMEDIATE_TLS13_CIPHERSUITES)
        _set_groups(ctx)
        # A TCP FIN without close_notify is read as end of stream (like
        # close_notify) instead of a fatal error, so it can be forwarded as
        # a half-close the way a TCP proxy forwards a FIN.
        options = (
            SSL.OP_NO_COMPRESSION | SSL.OP_SINGLE_ECDH_USE | _OP_NO_RENEGOTIATION | _OP_IGNORE_UNEXPECTED_EOF
        )
        if not self.session_tickets:
            options |= SSL.OP_NO_TICKET
        ctx.set_options(options)
        # Stateless tickets carry resumption; no server-side session cache
        # to grow with the number of clients.
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)
        ctx.set_session_id(b"kongacme")
        ctx.set_mode(_MODE_RELEASE_BUFFERS)
        for extra in intermediates:
            ctx.add_extra_chain_cert(extra)
        ctx.set_alpn_select_callback(_select_alpn)
        return ctx
