"""
Tests for kongacme.config.daemon.parse_endpoint_description.
"""

from twisted.trial.unittest import SynchronousTestCase

from kongacme.config.daemon import parse_endpoint_description


class ParseEndpointDescriptionTests(SynchronousTestCase):
    """
    Tests for parse_endpoint_description: Twisted's endpoint string syntax.
    """

    def test_positional_and_keywords(self) -> None:
        """Parts are positional; key=value parts are keywords."""
        self.assertEqual(parse_endpoint_description("tcp:443"), (["tcp", "443"], {}))
        self.assertEqual(
            parse_endpoint_description("tcp:port=443:interface=127.0.0.1"),
            (["tcp"], {"port": "443", "interface": "127.0.0.1"}),
        )
        self.assertEqual(parse_endpoint_description("haproxy:tcp:443"), (["haproxy", "tcp", "443"], {}))

    def test_escapes_and_equals_in_values(self) -> None:
        """A backslash escapes a colon; a value may hold '='; empty parts stay."""
        self.assertEqual(parse_endpoint_description(r"tcp6:443:interface=\:\:1"), (["tcp6", "443"], {"interface": "::1"}))
        self.assertEqual(parse_endpoint_description("a=b=c:d"), (["d"], {"a": "b=c"}))
        self.assertEqual(parse_endpoint_description("tcp:443:interface="), (["tcp", "443"], {"interface": ""}))
        self.assertEqual(parse_endpoint_description(""), ([""], {}))

    def test_trailing_backslash(self) -> None:
        """A description ending in a lone backslash is refused."""
        self.assertRaises(ValueError, parse_endpoint_description, "tcp:443\\")
