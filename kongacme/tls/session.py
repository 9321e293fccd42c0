"""
One server-side TLS session over memory BIOs, as the lean engine's relay
and the Twisted path's pump drive it, from either TLS binding kongacme has:

- :class:`PyOpenSSLSession`: pyOpenSSL's ``SSL.Connection`` (OpenSSL in
  cryptography's wheel) on its chain's shared context or the certificate's
  own: what every connection gets where the own binding is not built (a
  busy certificate's TLS 1.3 clients aside), and where it is, the
  connections of a certificate it refused, or of one taken in only once
  busier while it holds as many as it may;
- :class:`StdSession`: the standard library's ``ssl.SSLObject`` with two
  ``ssl.MemoryBIO`` objects (the system's OpenSSL), on a context of the
  certificate's own (:mod:`kongacme.tls.stdlib`): what a busy certificate's
  connections get. The same OpenSSL calls, each a C method rather than a
  Python wrapper over cffi, which per kept-alive request is most of what
  separates a Python relay from HAProxy (bench/RESULTS.md, "The standard
  library's ssl for busy certificates").

- :class:`kongacme.tls._openssl.Session`: kongacme's own binding of the
  system's OpenSSL (:mod:`kongacme.tls.openssl`), where it is built: what
  a certificate's connections get from its first on (on a shared context,
  then its own once busy, instead of :class:`StdSession`), TLS 1.2 clients
  included, and what the compiled steady state
  (:mod:`kongacme.engine._steady`) calls with no Python in between.

All three have the same attributes, so the relay calls them alike (each a
bound method of the binding, looked up once here, not a wrapper of ours):
``feed(data)`` puts ciphertext in, ``feed_eof()`` ends it, ``do_handshake()``,
``read(size)`` gives plaintext (``b""`` or an exception in
:data:`CLOSED` at the client's close_notify or FIN), ``take(size)`` gives
ciphertext to send (``b""`` when there is none); and :meth:`seal`, :meth:`close_notify`, :meth:`is_tls13`,
:meth:`alpn` and :meth:`release`. Their exceptions are caught as the tuples
below, which hold the classes of pyOpenSSL and of the standard library
(whose exceptions the own binding raises).
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any, Union

from OpenSSL import SSL

from kongacme.tls.records import seal

if TYPE_CHECKING:
    from kongacme.tls._openssl import Session as OpenSSLSession

#: "No whole record yet" (``read``, ``do_handshake``).
WANT_READ = (SSL.WantReadError, ssl.SSLWantReadError)

#: The client's close_notify, once read (the standard library raises it
#: when our own close_notify went first; else its ``read`` gives ``b""``).
CLOSED = (SSL.ZeroReturnError, ssl.SSLZeroReturnError)

#: Any TLS failure (the handshake's, a bad record, ...).
TLS_ERROR = (SSL.Error, ssl.SSLError)

#: ``SSL_version`` of a TLS 1.3 connection (pyOpenSSL's answer).
_TLS1_3 = 0x0304


class PyOpenSSLSession:
    """
    pyOpenSSL's memory-BIO connection. ``owner`` becomes its app data: the
    context's ALPN select callback reads the route's list from its
    ``alpn_allowed`` (:func:`kongacme.tls.context._select_alpn`).
    """

    __slots__ = ("connection", "feed", "feed_eof", "do_handshake", "read")

    #: ``send`` may take part of the plaintext (one record at a time): the
    #: relay's steady state stays in Python for this binding.
    whole_writes = False

    def __init__(self, connection: SSL.Connection, owner: Any):
        self.connection = connection
        connection.set_app_data(owner)
        connection.set_accept_state()
        self.feed = connection.bio_write
        self.feed_eof = connection.bio_shutdown
        self.do_handshake = connection.do_handshake
        self.read = connection.recv

    def take(self, size: int) -> bytes:
        """Up to ``size`` bytes of ciphertext OpenSSL wrote; ``b""`` when there is none."""
        try:
            return self.connection.bio_read(size)
        except SSL.WantReadError:
            return b""

    def seal(self, data: bytes) -> tuple[bytes, bool]:
        """:func:`kongacme.tls.records.seal`: ``data`` as records, and whether more are left to ``take``."""
        return seal(self.connection, data)

    def close_notify(self) -> None:
        """Have OpenSSL write its close_notify (to ``take``)."""
        try:
            self.connection.shutdown()
        except SSL.Error:
            pass

    def is_tls13(self) -> bool:
        return self.connection.get_protocol_version() == _TLS1_3

    def alpn(self) -> bytes | None:
        """The protocol ALPN chose, if any."""
        return self.connection.get_alpn_proto_negotiated() or None

    def release(self) -> None:
        """Break the connection ↔ owner cycle (the app data)."""
        self.connection.set_app_data(None)


class StdSession:
    """
    The standard library's ``SSLObject`` over two memory BIOs. Its context
    carries the certificate and the route's ALPN list, so nothing is set
    per connection.
    """

    __slots__ = ("tls", "feed", "feed_eof", "do_handshake", "read", "take", "write")

    #: ``write`` takes all of the plaintext and ``take()`` with no size
    #: empties the BIO: what the compiled steady state
    #: (:mod:`kongacme.engine._steady`) needs of a session.
    whole_writes = True

    def __init__(self, context: ssl.SSLContext):
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        tls = self.tls = context.wrap_bio(incoming, outgoing, server_side=True)
        self.feed = incoming.write
        self.feed_eof = incoming.write_eof
        self.do_handshake = tls.do_handshake
        self.read = tls.read
        self.take = outgoing.read
        self.write = tls.write

    def seal(self, data: bytes) -> tuple[bytes, bool]:
        """
        ``data`` as records: the standard library writes all of it (no
        partial writes), and ``take`` with no size empties the BIO, so
        nothing is ever left.
        """
        self.write(data)
        return self.take(), False

    def close_notify(self) -> None:
        try:
            self.tls.unwrap()
        except TLS_ERROR:
            pass  # WantRead: ours is written, the client's is still to come

    def is_tls13(self) -> bool:
        return self.tls.version() == "TLSv1.3"

    def alpn(self) -> bytes | None:
        chosen = self.tls.selected_alpn_protocol()
        return chosen.encode("ascii") if chosen else None

    def release(self) -> None:
        pass


#: A busy certificate's session (:class:`~kongacme.tls.stdlib.StdContexts`).
BusySession = Union[StdSession, "OpenSSLSession"]

#: A session of any binding (what ``ContextBuilder.session_for`` gives).
TLSSession = Union[PyOpenSSLSession, StdSession, "OpenSSLSession"]


def tls_failure_reason(error: BaseException) -> str | None:
    """
    The standard library's reason for a failed handshake, worded as
    OpenSSL's own (``NO_SHARED_CIPHER`` → ``no shared cipher``) like
    pyOpenSSL's; None for anything else.
    """
    if isinstance(error, ssl.SSLError) and error.reason:
        return error.reason.lower().replace("_", " ")
    return None
