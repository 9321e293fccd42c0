"""
Routes: which upstream serves the host name a client asked for (its SNI).

The lookup runs once per connection, so the table is two dicts — exact names
and wildcard suffixes — and a lookup walks the name's labels once instead of
scanning every pattern.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

import attrs
from zope.interface import implementer

from kongacme.interfaces import IRouter

_PROXY_PROTOCOLS = (None, "v1", "v2")

# The order in which the TLS layer offers protocols when a client offers
# several: h2 is preferred, then HTTP/1.1, then anything else as configured.
_ALPN_RANK = {"h2": 0, "http/1.1": 1}


def _check_port(instance: object, attribute: attrs.Attribute, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise ValueError(f"{attribute.name} must be an integer in 1..65535, not {value!r}")


def _check_host(instance: object, attribute: attrs.Attribute, value: str) -> None:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{attribute.name} must be a non-empty string, not {value!r}")


def _check_alpn(instance: object, attribute: attrs.Attribute, value: tuple[str, ...]) -> None:
    for name in value:
        if not isinstance(name, str) or not name or not name.isascii():
            raise ValueError(f"ALPN protocol names must be non-empty ASCII strings, not {name!r}")


def _check_proxy_protocol(instance: object, attribute: attrs.Attribute, value: str | None) -> None:
    if value not in _PROXY_PROTOCOLS:
        raise ValueError(f"proxy_protocol must be 'v1', 'v2' or None, not {value!r}")


@attrs.frozen
class Route:
    """
    Where connections for some host names go.

    :ivar host: upstream host name or IP address literal.
    :ivar port: upstream TCP port.
    :ivar alpn: ALPN protocol names the TLS layer may negotiate for this
        route, in preference order.
    :ivar proxy_protocol: ``"v1"`` or ``"v2"`` to send a PROXY protocol
        header to the upstream first, or ``None``.
    """

    host: str = attrs.field(validator=_check_host)
    port: int = attrs.field(validator=_check_port)
    alpn: tuple[str, ...] = attrs.field(default=("http/1.1",), converter=tuple, validator=_check_alpn)
    proxy_protocol: str | None = attrs.field(default=None, validator=_check_proxy_protocol)
    #: :attr:`alpn` encoded, as the TLS layer wants it; computed once here
    #: because the TLS layer asks on every handshake.
    alpn_bytes: tuple[bytes, ...] = attrs.field(init=False, eq=False, repr=False)

    @alpn_bytes.default
    def _encode_alpn(self) -> tuple[bytes, ...]:
        return tuple(name.encode("ascii") for name in self.alpn)


def _normalize(name: str) -> str:
    # Host names are case-insensitive and may be written fully qualified.
    return name.strip().lower().rstrip(".")


@implementer(IRouter)
class RouteTable:
    """
    An immutable :class:`kongacme.interfaces.IRouter`: exact names first,
    then the most specific matching wildcard, then the default.

    A wildcard ``*.example.com`` matches ``a.example.com`` and
    ``a.b.example.com`` but never ``example.com`` itself. When the same
    pattern appears twice, the first entry wins (configuration order).

    :param entries: ``(patterns, route)`` pairs.
    :param default: the route for names nothing else matches (and for
        clients that sent no SNI), or ``None``.
    :raises ValueError: for a pattern that is empty or has a ``*`` anywhere
        but as the whole first label.
    """

    def __init__(self, entries: Sequence[tuple[Sequence[str], Route]] = (), default: Route | None = None):
        self._exact: dict[str, Route] = {}
        self._suffixes: dict[str, Route] = {}
        self._routes: list[Route] = []
        self.default = default
        for patterns, route in entries:
            if isinstance(patterns, str):
                raise TypeError(f"patterns must be a sequence of strings, not the string {patterns!r}")
            self._routes.append(route)
            for pattern in patterns:
                self._add(pattern, route)
        if default is not None:
            self._routes.append(default)

    def _add(self, pattern: str, route: Route) -> None:
        name = _normalize(pattern)
        if name.startswith("*."):
            suffix = name[2:]
            if not suffix or "*" in suffix or suffix.startswith("."):
                raise ValueError(f"invalid wildcard host pattern {pattern!r}")
            self._suffixes.setdefault(suffix, route)
        elif not name or "*" in name:
            raise ValueError(f"invalid host pattern {pattern!r}")
        else:
            self._exact.setdefault(name, route)

    @classmethod
    def from_config(cls, routes: Iterable[Any], default_route: Any | None) -> "RouteTable":
        """
        Build a table from configuration objects.

        :param routes: objects with ``hosts``, ``upstream_host``,
            ``upstream_port``, ``alpn`` and ``proxy_protocol`` attributes.
        :param default_route: one more such object (its ``hosts`` are
            ignored), or ``None``.
        """
        entries = [(tuple(r.hosts), _route_from_config(r)) for r in routes]
        default = _route_from_config(default_route) if default_route is not None else None
        return cls(entries, default)

    def route_for(self, server_name: str | None) -> Route | None:
        """
        See :meth:`kongacme.interfaces.IRouter.route_for`.
        """
        if server_name is None:
            return self.default
        name = _normalize(server_name)
        route = self._exact.get(name)
        if route is not None:
            return route
        if self._suffixes:
            # Drop one leading label at a time: the first suffix found is the
            # longest, i.e. the most specific wildcard. The name itself is
            # never tried, so "*.example.com" does not match the apex.
            dot = name.find(".")
            while dot != -1:
                route = self._suffixes.get(name[dot + 1 :])
                if route is not None:
                    return route
                dot = name.find(".", dot + 1)
        return self.default

    def routes(self) -> tuple[Route, ...]:
        """
        :return: every route in the table, the default last, in
            configuration order (duplicates kept).
        """
        return tuple(self._routes)

    def all_alpn(self) -> tuple[bytes, ...]:
        """
        :return: the union of every route's ALPN protocols, ``h2`` before
            ``http/1.1`` before anything else (in configuration order).
        """
        return all_alpn(self)


def all_alpn(table: RouteTable) -> tuple[bytes, ...]:
    """
    The ALPN protocols the TLS layer should be ready to negotiate.

    :param table: a :class:`RouteTable`.
    :return: the union over all routes, ``h2`` first, then ``http/1.1``,
        then the others in the order they were first configured.
    """
    seen: dict[str, int] = {}
    for route in table.routes():
        for name in route.alpn:
            seen.setdefault(name, len(seen))
    ordered = sorted(seen, key=lambda name: (_ALPN_RANK.get(name, len(_ALPN_RANK)), seen[name]))
    return tuple(name.encode("ascii") for name in ordered)


def _route_from_config(config: Any) -> Route:
    return Route(
        host=config.upstream_host,
        port=config.upstream_port,
        alpn=tuple(config.alpn),
        proxy_protocol=config.proxy_protocol,
    )


def route_name(route: Route | None) -> str:
    """``host:port`` of a route for log lines (IPv6 in brackets)."""
    if route is None:
        return "?"
    host = f"[{route.host}]" if ":" in route.host else route.host
    return f"{host}:{route.port}"

