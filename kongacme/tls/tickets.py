"""
How many TLS 1.3 session tickets this process's server contexts send per
full handshake.

OpenSSL sends two by default, also with ``OP_NO_TICKET`` (then stateful
ones, which kongacme cannot resume: its session cache is off). pyOpenSSL
has no ``set_num_tickets``; OpenSSL's own configuration file (``NumTickets``
in its ``system_default`` section, ``etc/openssl/*.cnf``, named by
``OPENSSL_CONF``) sets the count for the whole process. This counts what a
context built now actually sends, with one handshake in memory, so the
daemon can say so at start.
"""

from __future__ import annotations

from typing import Optional

from OpenSSL import SSL
from twisted.internet.task import Clock
from twisted.logger import Logger

from kongacme.tls.context import ContextBuilder, Servable
from kongacme.tls.records import count_records

log = Logger()

#: Handshake rounds before giving up (a TLS 1.3 handshake needs two).
_ROUNDS = 8


def _step(connection: SSL.Connection) -> bool:
    try:
        connection.do_handshake()
    except SSL.WantReadError:
        return False
    return True


def _output(connection: SSL.Connection) -> bytes:
    try:
        return connection.bio_read(1 << 16)
    except SSL.WantReadError:
        return b""


def tickets_per_handshake(builder: ContextBuilder, certified: Servable) -> int:
    """
    The session tickets a full TLS 1.3 handshake with ``builder``'s
    settings sends: the records the server writes after the client's
    Finished (RFC 8446 §4.6.1; nothing else is sent then).

    :raises RuntimeError: if the in-memory handshake does not finish.
    """
    server = SSL.Connection(builder.own_context(certified), None)
    server.set_accept_state()
    client_context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    client_context.set_min_proto_version(SSL.TLS1_3_VERSION)
    client = SSL.Connection(client_context, None)
    client.set_connect_state()
    server_done = False
    for _ in range(_ROUNDS):
        client_done = _step(client)
        data = _output(client)
        if data:
            server.bio_write(data)
        if server_done:
            break
        server_done = _step(server)
        if server_done and client_done:
            break
        client.bio_write(_output(server))
    if not server_done:
        raise RuntimeError("the in-memory TLS 1.3 handshake did not finish")
    complete, _, _ = count_records(0, b"", _output(server))
    return complete


#: What :func:`pyopenssl_tickets` counted (-1: it could not).
_counted: Optional[int] = None


def pyopenssl_tickets(certified: Optional[Servable] = None) -> int:
    """
    The session tickets a full TLS 1.3 handshake on pyOpenSSL sends in
    this process (OpenSSL's configuration is read once per process),
    counted once, on the first call's ``certified`` (the daemon's fallback
    certificate at start), else on a throwaway one; -1, logged, if it
    cannot be counted.
    """
    global _counted
    if _counted is None:
        if certified is None:
            from kongacme.tls.fallback import generate_self_signed

            certified = generate_self_signed("tickets.invalid", days=1)
        try:
            _counted = tickets_per_handshake(ContextBuilder(Clock()), certified)
        except Exception:  # an OpenSSL that will not do it: taken as not the count configured
            log.failure("could not count the session tickets a TLS 1.3 handshake on pyOpenSSL sends")
            _counted = -1
    return _counted
