"""
OpenSSL server contexts: one per certificate, built on first use with
Mozilla's "intermediate" profile and rebuilt when its ticket keys are due
for rotation.
"""

from __future__ import annotations

import weakref

from OpenSSL import SSL
from OpenSSL._util import lib as _lib  # for SSL_CTX_set1_curves_list only
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from kongacme.tls.certs import CertifiedKey

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
_OP_IGNORE_UNEXPECTED_EOF = getattr(SSL, "OP_IGNORE_UNEXPECTED_EOF", 0x80)


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


class ContextBuilder:
    """
    Builds and memoises one ``SSL.Context`` per :class:`CertifiedKey`.

    OpenSSL keeps session-ticket keys per context, so rebuilding a context
    is how its ticket keys rotate: a context older than
    ``ticket_key_rotation`` seconds is replaced on its next use (clients
    holding an old ticket do a full handshake once).

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
        self._contexts: "weakref.WeakKeyDictionary[CertifiedKey, tuple[SSL.Context, float]]" = (
            weakref.WeakKeyDictionary()
        )

    def context_for(self, certified: CertifiedKey) -> SSL.Context:
        """
        The context serving ``certified``, built now if needed.
        """
        entry = self._contexts.get(certified)
        now = self._clock.seconds()
        if entry is not None and now - entry[1] < self.ticket_key_rotation:
            return entry[0]
        context = self.build(certified)
        self._contexts[certified] = (context, now)
        return context

    def connection_for(self, certified: CertifiedKey) -> SSL.Connection:
        """
        A new server-side ``SSL.Connection`` (no socket: memory BIOs) that
        will present ``certified``. The one place a connection gets its
        certificate, so how certificates are attached (a context per
        certificate today) can change without touching the TLS pump.
        """
        return SSL.Connection(self.context_for(certified), None)

    def forget_all(self) -> None:
        """Drop every memoised context (settings changed)."""
        self._contexts.clear()

    def __len__(self) -> int:
        return len(self._contexts)

    def build(self, certified: CertifiedKey) -> SSL.Context:
        """
        A fresh server context for ``certified`` (not memoised).
        """
        ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
        ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
        ctx.set_max_proto_version(SSL.TLS1_3_VERSION)
        ctx.set_cipher_list(INTERMEDIATE_TLS12_CIPHERS)
        ctx.set_tls13_ciphersuites(INTERMEDIATE_TLS13_CIPHERSUITES)
        if not _lib.SSL_CTX_set1_curves_list(ctx._context, INTERMEDIATE_CURVES):
            raise RuntimeError("OpenSSL refused the curve list %r" % (INTERMEDIATE_CURVES,))
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
        ctx.use_certificate(certified.chain[0])
        for extra in certified.chain[1:]:
            ctx.add_extra_chain_cert(extra)
        ctx.use_privatekey(certified.key)
        ctx.check_privatekey()
        ctx.set_alpn_select_callback(_select_alpn)
        return ctx
