"""
Tests for kongacme.proxy.routes.
"""

from __future__ import annotations

import attrs
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from kongacme.interfaces import IRouter
from kongacme.proxy.routes import Route, RouteTable, all_alpn, route_name

A = Route("10.0.0.1", 8001)
B = Route("10.0.0.2", 8002)
C = Route("10.0.0.3", 8003)
D = Route("10.0.0.4", 8004)


@attrs.frozen
class ConfigRoute:
    """Looks like a route from kongacme.config."""

    hosts: tuple[str, ...]
    upstream_host: str
    upstream_port: int
    alpn: tuple[str, ...] = ("http/1.1",)
    proxy_protocol: str | None = None


class RouteTests(unittest.SynchronousTestCase):
    """
    Tests for Route.
    """

    def test_defaults(self) -> None:
        """
        A route offers HTTP/1.1 only and sends no PROXY header by default.
        """
        route = Route("app", 80)
        self.assertEqual(route.alpn, ("http/1.1",))
        self.assertIsNone(route.proxy_protocol)
        self.assertEqual(route.alpn_bytes, (b"http/1.1",))

    def test_alpn_list_becomes_tuple(self) -> None:
        """
        A list of ALPN names is stored as a tuple, so routes stay hashable.
        """
        route = Route("app", 80, alpn=["h2", "http/1.1"])  # type: ignore[arg-type]
        self.assertEqual(route.alpn, ("h2", "http/1.1"))
        hash(route)

    def test_invalid(self) -> None:
        """
        Bad ports, empty hosts, unknown PROXY versions and non-ASCII ALPN
        names are refused with ValueError.
        """
        for kwargs in (
            dict(host="app", port=0),
            dict(host="app", port=65536),
            dict(host="app", port=True),
            dict(host="", port=80),
            dict(host="app", port=80, proxy_protocol="v3"),
            dict(host="app", port=80, alpn=("",)),
            dict(host="app", port=80, alpn=("h\u00e9",)),
        ):
            self.assertRaises(ValueError, Route, **kwargs)

    def test_frozen(self) -> None:
        """
        Routes are immutable.
        """
        self.assertRaises(attrs.exceptions.FrozenInstanceError, setattr, A, "port", 1)


class RouteTableTests(unittest.SynchronousTestCase):
    """
    Tests for RouteTable.
    """

    def setUp(self) -> None:
        self.table = RouteTable(
            [
                (["example.com", "www.example.com"], A),
                (["*.example.com"], B),
                (["*.eu.example.com"], C),
                (["special.eu.example.com"], D),
            ],
            default=None,
        )

    def test_provides_irouter(self) -> None:
        """
        RouteTable provides IRouter.
        """
        self.assertTrue(verifyObject(IRouter, self.table))

    def test_exact(self) -> None:
        """
        An exact name wins over any wildcard that also matches it.
        """
        self.assertIs(self.table.route_for("www.example.com"), A)
        self.assertIs(self.table.route_for("special.eu.example.com"), D)

    def test_case_and_trailing_dot(self) -> None:
        """
        Names and patterns match case-insensitively, with or without a
        trailing dot.
        """
        table = RouteTable([(["App.Example.COM."], A), (["*.Other.Org"], B)])
        self.assertIs(table.route_for("APP.example.com"), A)
        self.assertIs(table.route_for("app.example.com."), A)
        self.assertIs(table.route_for("x.OTHER.org"), B)

    def test_wildcard_any_depth(self) -> None:
        """
        A wildcard matches subdomains at any depth.
        """
        self.assertIs(self.table.route_for("api.example.com"), B)
        self.assertIs(self.table.route_for("a.b.c.example.com"), B)

    def test_wildcard_not_apex(self) -> None:
        """
        ``*.x`` never matches ``x`` itself.
        """
        table = RouteTable([(["*.example.com"], B)], default=C)
        self.assertIs(table.route_for("example.com"), C)

    def test_most_specific_wildcard(self) -> None:
        """
        Of several matching wildcards the longest suffix wins, whatever the
        configuration order.
        """
        self.assertIs(self.table.route_for("x.eu.example.com"), C)
        self.assertIs(self.table.route_for("a.b.eu.example.com"), C)
        self.assertIs(self.table.route_for("eu.example.com"), B)
        reordered = RouteTable([(["*.eu.example.com"], C), (["*.example.com"], B)])
        self.assertIs(reordered.route_for("x.eu.example.com"), C)

    def test_dots_literal(self) -> None:
        """
        Dots in patterns are literal: ``*.example.com`` does not match
        ``xexample.com`` or ``a.xexample.com``.
        """
        table = RouteTable([(["*.example.com"], B)])
        self.assertIsNone(table.route_for("xexample.com"))
        self.assertIsNone(table.route_for("a.xexample.com"))
        self.assertIsNone(table.route_for("a.example.com.evil.org"))

    def test_default(self) -> None:
        """
        Unmatched names and a missing server name get the default route, or
        None when there is none.
        """
        self.assertIsNone(self.table.route_for("other.org"))
        self.assertIsNone(self.table.route_for(None))
        table = RouteTable([(["example.com"], A)], default=D)
        self.assertIs(table.route_for("other.org"), D)
        self.assertIs(table.route_for(None), D)
        self.assertIs(table.route_for("example.com"), A)

    def test_first_duplicate_wins(self) -> None:
        """
        When two entries list the same pattern, the first one wins.
        """
        table = RouteTable([(["a.example.com", "*.x.org"], A), (["A.example.com", "*.x.org"], B)])
        self.assertIs(table.route_for("a.example.com"), A)
        self.assertIs(table.route_for("y.x.org"), A)

    def test_invalid_patterns(self) -> None:
        """
        Empty patterns and misplaced wildcards are refused.
        """
        for pattern in ("", "*", "*.", "a.*.example.com", "*example.com", "**.example.com", "*..com"):
            self.assertRaises(ValueError, RouteTable, [([pattern], A)])

    def test_patterns_must_not_be_a_string(self) -> None:
        """
        A bare string for the patterns (a classic config mistake that would
        route every character) is a TypeError.
        """
        self.assertRaises(TypeError, RouteTable, [("example.com", A)])

    def test_empty(self) -> None:
        """
        An empty table routes nothing.
        """
        table = RouteTable()
        self.assertIsNone(table.route_for("example.com"))
        self.assertIsNone(table.route_for(None))
        self.assertEqual(table.all_alpn(), ())

    def test_routes(self) -> None:
        """
        routes() lists every route in configuration order, the default last.
        """
        table = RouteTable([(["a.org"], A), (["b.org"], B)], default=C)
        self.assertEqual(table.routes(), (A, B, C))


class FromConfigTests(unittest.SynchronousTestCase):
    """
    Tests for RouteTable.from_config.
    """

    def test_from_config(self) -> None:
        """
        Config objects become routes with their upstream, ALPN and PROXY
        settings; the default route's hosts are ignored.
        """
        table = RouteTable.from_config(
            [
                ConfigRoute(("app.example.com",), "10.1.0.1", 8080, ("h2", "http/1.1"), "v2"),
                ConfigRoute(("*.example.com",), "10.1.0.2", 8081),
            ],
            ConfigRoute((), "10.1.0.9", 9000, proxy_protocol="v1"),
        )
        self.assertEqual(table.route_for("app.example.com"), Route("10.1.0.1", 8080, ("h2", "http/1.1"), "v2"))
        self.assertEqual(table.route_for("x.example.com"), Route("10.1.0.2", 8081))
        self.assertEqual(table.route_for("other.org"), Route("10.1.0.9", 9000, proxy_protocol="v1"))

    def test_no_default(self) -> None:
        """
        Without a default route, unmatched names route nowhere.
        """
        table = RouteTable.from_config([ConfigRoute(("a.org",), "h", 1)], None)
        self.assertIsNone(table.route_for("b.org"))


class AllAlpnTests(unittest.SynchronousTestCase):
    """
    Tests for all_alpn.
    """

    def test_union_ordered(self) -> None:
        """
        The union of every route's protocols, h2 before http/1.1 before the
        rest (in first-configured order), each once, as bytes.
        """
        table = RouteTable(
            [
                (["a.org"], Route("h", 1, ("http/1.1",))),
                (["b.org"], Route("h", 2, ("x-custom", "http/1.1", "h2"))),
            ],
            default=Route("h", 3, ("acme-tls/1", "h2")),
        )
        self.assertEqual(all_alpn(table), (b"h2", b"http/1.1", b"x-custom", b"acme-tls/1"))
        self.assertEqual(table.all_alpn(), all_alpn(table))

    def test_default_only(self) -> None:
        """
        A table with only a default route offers its protocols.
        """
        self.assertEqual(all_alpn(RouteTable([], Route("h", 1))), (b"http/1.1",))


class RouteNameTests(unittest.SynchronousTestCase):
    """Tests for route_name."""

    def test_forms(self) -> None:
        """host:port for log lines, an IPv6 address in brackets, ``?`` for no route."""
        self.assertEqual(
            [route_name(Route("10.0.0.1", 8080)), route_name(Route("::1", 443)), route_name(None)],
            ["10.0.0.1:8080", "[::1]:443", "?"],
        )
