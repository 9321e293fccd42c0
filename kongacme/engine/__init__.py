"""
The lean engine (``listen.engine: lean``, the default): the common TLS connection — a
ClientHello for a name whose certificate is cached, a route whose upstream
can be dialled at once — served on one epoll of kongacme's own, without
Twisted's per-connection transports; every other connection is handed,
untouched, to the Twisted path (:mod:`kongacme.tls.protocol`).

- :mod:`kongacme.engine.loop`: the epoll, one reader of the reactor;
- :mod:`kongacme.engine.listener`: accepting, within the connection limits;
- :mod:`kongacme.engine.connection`: the ClientHello and the decision;
- :mod:`kongacme.engine.relay`: TLS with the client, and the relay's life;
- :mod:`kongacme.engine.upstream`: the upstream side of the relay;
- :mod:`kongacme.engine.sockets`: socket helpers (non-blocking, reset on close);
- ``kongacme/engine/_steady.c`` (:mod:`kongacme.engine._steady`, optional):
  the loop's dispatch and the relay's steady state, compiled;
- :mod:`kongacme.engine.lean`: what they share, and the hand-over.
"""
