"""
Tests for kongacme.config: loading files, defaults, the daemon's sections.
"""

from __future__ import annotations

import importlib.util
import os

import yaml
from twisted.trial.unittest import SynchronousTestCase

from kongacme.config import (
    AdminConfig,
    DaemonConfig,
    HTTPConfig,
    ListenConfig,
    LoggingConfig,
    ProxyConfig,
    RouteConfig,
    StaticCertificate,
    TLSConfig,
    load_config,
    parse_config,
)
from kongacme.errors import ConfigError

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc", "kongacme.example.yaml")
NO_SSL = (
    "ssl: endpoints are not allowed here (kongacme terminates TLS itself); use tcp:, tcp6:, unix: or systemd:"
)


def problems_of(case: SynchronousTestCase, data: object, base_dir: str = "/srv") -> list[tuple[str, str]]:
    """
    The problems :func:`parse_config` reports for ``data``.
    """
    error = case.assertRaises(ConfigError, parse_config, data, base_dir)
    return error.problems


class LoadConfigTests(SynchronousTestCase):
    """
    Tests for load_config.
    """

    def write(self, text: str, name: str = "kongacme.yaml") -> str:
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return path

    def test_example_config_loads(self) -> None:
        """
        etc/kongacme.example.yaml, the production template, loads without
        problems or warnings (its state_dir, /var/lib/kongacme, need not
        exist yet): ports 443 and 80, the Admin API on loopback, state in
        the unit's StateDirectory, Let's Encrypt staging, kong storage.
        """
        config = load_config(EXAMPLE)
        self.assertEqual(config.warnings, ())
        self.assertEqual(
            config.listen,
            ListenConfig(tls=("tcp:443",), http=("tcp:80",), admin=("tcp:8001:interface=127.0.0.1",)),
        )
        self.assertEqual(config.state_dir, "/var/lib/kongacme")
        self.assertIsNone(config.default_route)
        self.assertIsNone(config.http.https_port)
        self.assertEqual(config.issuance.challenge_port, 80)
        self.assertEqual(config.routes[0].hosts, ("example.com", "*.example.com"))
        assert config.acme is not None
        self.assertEqual(config.acme.api_uri, "https://acme-staging-v02.api.letsencrypt.org/directory")
        self.assertTrue(config.acme.tos_accepted)
        self.assertEqual(config.acme.domains, ("example.com", "*.example.com"))
        self.assertEqual(config.acme.storage, "kong")

    def test_demo_config_loads(self) -> None:
        """
        The demo's config (scripts/demo_config.py writes it; it does not
        read the example) loads without problems, with state next to the
        written file and the local Pebble as its CA.
        """
        repo = os.path.dirname(os.path.dirname(EXAMPLE))
        spec = importlib.util.spec_from_file_location("demo_config", os.path.join(repo, "scripts", "demo_config.py"))
        assert spec is not None and spec.loader is not None
        demo = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(demo)
        path = self.write(yaml.safe_dump(demo.demo_config("ca.pem")))
        with open(os.path.join(os.path.dirname(path), "ca.pem"), "w") as f:
            f.write("")
        config = load_config(path)
        self.assertEqual(config.warnings, ())
        self.assertEqual(config.state_dir, os.path.join(os.path.dirname(path), "state"))
        self.assertEqual(config.listen.tls, ("tcp:8443:interface=127.0.0.1",))
        assert config.acme is not None
        self.assertEqual(config.acme.api_uri, "https://127.0.0.1:14000/dir")
        self.assertEqual(config.acme.storage, "kong")

    def test_empty_mapping_gives_defaults(self) -> None:
        """
        ``{}`` is every default, with state_dir resolved next to the file and
        no ACME section.
        """
        path = self.write("{}\n")
        config = load_config(path)
        self.assertEqual(
            config,
            DaemonConfig(state_dir=os.path.join(os.path.dirname(path), "state")),
        )
        self.assertEqual(config.listen.tls, ("tcp:8443:interface=127.0.0.1",))
        self.assertEqual(config.listen.http, ("tcp:8080:interface=127.0.0.1",))
        self.assertEqual(config.listen.admin, ("tcp:8001:interface=127.0.0.1",))
        self.assertEqual(config.tls, TLSConfig(None, None, 10.0, True, 43200.0))
        self.assertEqual(config.proxy, ProxyConfig(5.0, 300.0))
        self.assertEqual(config.http, HTTPConfig("redirect", None, 8192, 10.0))
        self.assertEqual(config.admin, AdminConfig(None))
        self.assertEqual(config.logging, LoggingConfig("info", "text", "-"))
        self.assertIsNone(config.acme)
        self.assertIsNone(config.default_route)
        self.assertEqual((config.routes, config.certificates, config.warnings), ((), (), ()))

    def test_empty_file_is_an_error(self) -> None:
        """
        An empty file, one of only whitespace or comments, or a bare document
        marker is refused ("configuration file is empty"): it is far more
        often a truncated write than a wish for every default.
        """
        for text in ("", "\n  \n", "# all commented out\n# listen:\n", "---\n", "--- # x\n...\n"):
            path = self.write(text)
            problems = self.assertRaises(ConfigError, load_config, path).problems
            self.assertEqual(len(problems), 1, text)
            self.assertEqual(problems[0][0], "")
            self.assertIn("configuration file is empty", problems[0][1])

    def test_json_file(self) -> None:
        """
        JSON is read as YAML.
        """
        path = self.write('{"state_dir": "/var/lib/kongacme", "http": {"mode": "not_found"}}', "kongacme.json")
        config = load_config(path)
        self.assertEqual(config.state_dir, "/var/lib/kongacme")
        self.assertEqual(config.http.mode, "not_found")

    def test_relative_paths_resolved(self) -> None:
        """
        state_dir, static certificate files, the fallback certificate and key
        and the log file are resolved against the config file's directory.
        """
        path = self.write(
            "state_dir: state\n"
            "tls: {fallback_cert: certs/fallback.pem, fallback_key: certs/fallback.key}\n"
            "certificates: [{cert: certs/a.pem, key: ./certs/a.key}]\n"
            "logging: {file: ../log/kongacme.log}\n"
        )
        base = os.path.dirname(path)
        os.makedirs(os.path.join(base, "certs"))
        for name in ("fallback.pem", "fallback.key", "a.pem", "a.key"):
            with open(os.path.join(base, "certs", name), "w") as f:
                f.write("not parsed here\n")
        config = load_config(path)
        self.assertEqual(config.state_dir, os.path.join(base, "state"))
        self.assertEqual(config.tls.fallback_cert, os.path.join(base, "certs", "fallback.pem"))
        self.assertEqual(config.tls.fallback_key, os.path.join(base, "certs", "fallback.key"))
        self.assertEqual(
            config.certificates,
            (StaticCertificate(os.path.join(base, "certs", "a.pem"), os.path.join(base, "certs", "a.key")),),
        )
        self.assertEqual(config.logging.file, os.path.join(os.path.dirname(base), "log", "kongacme.log"))

    def test_yaml_syntax_error(self) -> None:
        """
        A YAML syntax error is one problem with an empty path, naming the file
        and the line.
        """
        path = self.write("listen:\n  tls: [tcp:8443\nstate_dir: x\n")
        error = self.assertRaises(ConfigError, load_config, path)
        [(where, message)] = error.problems
        self.assertEqual(where, "")
        self.assertIn(path, message)
        self.assertIn("line 3", message)

    def test_duplicate_key(self) -> None:
        """
        A key given twice in one mapping is refused, naming the line.
        """
        path = self.write("http:\n  mode: proxy\n  mode: redirect\n")
        error = self.assertRaises(ConfigError, load_config, path)
        [(where, message)] = error.problems
        self.assertEqual(where, "")
        self.assertIn("duplicate key 'mode'", message)
        self.assertIn("line 3", message)

    def test_missing_file(self) -> None:
        """
        A missing file is a ConfigError naming it.
        """
        path = os.path.abspath(self.mktemp())
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(error.problems, [("", f"{path}: configuration file not found")])

    def test_top_level_not_a_mapping(self) -> None:
        """
        A file whose top level is not a mapping is refused.
        """
        path = self.write("- listen\n- routes\n")
        error = self.assertRaises(ConfigError, load_config, path)
        [(where, message)] = error.problems
        self.assertEqual(where, "")
        self.assertIn("must be a mapping", message)
        self.assertIn("not a list", message)

    def test_error_message_lists_every_problem(self) -> None:
        """
        str(ConfigError) has one "path: message" line per problem, in the
        order of the schema's sections.
        """
        path = self.write("http: {mode: bounce}\nproxy: {connect_timeout: 0}\n")
        error = self.assertRaises(ConfigError, load_config, path)
        self.assertEqual(
            str(error).splitlines(),
            [
                "proxy.connect_timeout: must be greater than 0",
                "http.mode: must be one of redirect, proxy, not_found",
            ],
        )


class ParseConfigTests(SynchronousTestCase):
    """
    Tests for parse_config: the top level.
    """

    def test_top_level_not_a_mapping(self) -> None:
        """
        Data that is not a mapping is refused with an empty path.
        """
        [(where, message)] = problems_of(self, ["listen"])
        self.assertEqual(where, "")
        self.assertIn("must be a mapping", message)

    def test_unknown_field(self) -> None:
        """
        Unknown keys are errors, at any depth.
        """
        self.assertEqual(
            problems_of(self, {"listner": {}, "http": {"port": 80}}),
            [("listner", "unknown field"), ("http.port", "unknown field")],
        )

    def test_null_sections_are_defaults(self) -> None:
        """
        A section (or field) given as null takes its defaults.
        """
        config = parse_config({"listen": None, "tls": None, "http": {"mode": None}, "acme": None}, "/srv")
        self.assertEqual(config, DaemonConfig(state_dir="/srv/state"))

    def test_section_must_be_mapping(self) -> None:
        """
        A section that is not a mapping is reported at its path.
        """
        self.assertEqual(problems_of(self, {"proxy": 5}), [("proxy", "must be a mapping")])

    def test_all_problems_collected(self) -> None:
        """
        Every problem in every section is reported, section by section.
        """
        self.assertEqual(
            problems_of(
                self,
                {
                    "listen": {"tls": "ssl:443"},
                    "routes": [{"hosts": ["a.test"], "upstream": "a.test"}],
                    "http": {"max_header_bytes": 10},
                    "logging": {"level": "verbose"},
                    "acme": {"rsa_key_size": 1024},
                },
            ),
            [
                ("listen.tls[0]", NO_SSL),
                ("routes[0].upstream", "must be host:port"),
                ("http.max_header_bytes", "must be between 1024 and 1048576"),
                ("logging.level", "must be one of debug, info, warn, error"),
                ("acme.account_email", "required"),
                ("acme.rsa_key_size", "must be one of 2048, 3072, 4096"),
                ("acme.tos_accepted", "terms of service must be accepted, see https://letsencrypt.org/repository/"),
            ],
        )


class ListenTests(SynchronousTestCase):
    """
    Tests for the listen section.
    """

    def test_single_string_and_empty_list(self) -> None:
        """
        A single string is a one-element list; an empty list disables the
        listener.
        """
        config = parse_config({"listen": {"tls": "tcp:443", "http": []}}, "/srv")
        self.assertEqual(config.listen, ListenConfig(tls=("tcp:443",), http=()))

    def test_engine(self) -> None:
        """
        listen.engine is lean by default, twisted when asked; anything else
        is refused naming the field and the choices.
        """
        self.assertEqual(parse_config({}, "/srv").listen.engine, "lean")
        self.assertEqual(parse_config({"listen": {"engine": "twisted"}}, "/srv").listen.engine, "twisted")
        self.assertEqual(parse_config({"listen": {"engine": "lean"}}, "/srv").listen.engine, "lean")
        for wrong in ("fast", 1, True, ["lean"]):
            error = self.assertRaises(ConfigError, parse_config, {"listen": {"engine": wrong}}, "/srv")
            self.assertIn("listen.engine", str(error))
            self.assertIn("must be one of lean, twisted", str(error))

    def test_valid_endpoint_types(self) -> None:
        """
        tcp, tcp6, unix and systemd endpoints are accepted for every listener.
        """
        endpoints = [
            "tcp:0",
            "tcp:443:interface=0.0.0.0:backlog=100",
            "tcp6:443:interface=\\:\\:1",
            "unix:/run/kongacme.sock:mode=660",
            "systemd:domain=INET6:index=0",
            "systemd:domain=INET:name=https",
        ]
        # (An Admin API on these addresses needs a token.)
        config = parse_config(
            {"listen": {"tls": endpoints, "http": endpoints, "admin": endpoints}, "admin": {"token": "t"}}, "/srv"
        )
        self.assertEqual(config.listen.tls, tuple(endpoints))
        self.assertEqual(config.listen.admin, tuple(endpoints))

    def test_haproxy_prefix_for_tls_and_http(self) -> None:
        """
        The TLS and HTTP listeners accept Twisted's haproxy: prefix (PROXY
        protocol from a load balancer) over any endpoint they accept; the
        wrapped endpoint is checked as usual; the Admin listener refuses it.
        """
        endpoints = ["haproxy:tcp:8443:interface=127.0.0.1", "haproxy:tcp6:443", "haproxy:systemd:domain=INET:index=0"]
        config = parse_config({"listen": {"tls": endpoints, "http": "haproxy:unix:/run/k.sock"}}, "/srv")
        self.assertEqual(config.listen.tls, tuple(endpoints))
        self.assertEqual(config.listen.http, ("haproxy:unix:/run/k.sock",))
        found = problems_of(
            self,
            {"listen": {"tls": ["haproxy:tcp:70000", "haproxy:ssl:443", "haproxy:", "haproxy:haproxy:tcp:1"],
                        "admin": "haproxy:tcp:8001"}},
        )
        self.assertEqual(
            found,
            [
                ("listen.tls[0]", "tcp: port must be a number between 0 and 65535"),
                ("listen.tls[1]", NO_SSL),
                ("listen.tls[2]", "haproxy: needs the endpoint it wraps, e.g. haproxy:tcp:443"),
                ("listen.tls[3]", "unknown or unsupported endpoint type 'haproxy:'; use tcp:, tcp6:, unix: or systemd:"),
                ("listen.admin[0]",
                 "unknown or unsupported endpoint type 'haproxy:'; use tcp:, tcp6:, unix:, systemd: or ssl:"),
            ],
        )

    def test_ssl_rejected_for_tls_and_http(self) -> None:
        """
        ssl: endpoints are refused for the TLS and HTTP listeners, saying
        why and what to use.
        """
        self.assertEqual(
            problems_of(self, {"listen": {"tls": ["tcp:8443", "ssl:443"], "http": "ssl:80"}}),
            [("listen.tls[1]", NO_SSL), ("listen.http[0]", NO_SSL)],
        )

    def test_ssl_allowed_for_admin(self) -> None:
        """
        The admin listener may be an ssl: endpoint (its files are checked).
        """
        [(where, message)] = problems_of(self, {"listen": {"admin": "ssl:8444:privateKey=/nonexistent.pem"}})
        self.assertEqual(where, "listen.admin[0]")
        self.assertIn("/nonexistent.pem", message)
        self.assertNotIn("not allowed", message)

    def test_invalid_endpoints(self) -> None:
        """
        Unknown endpoint types, bad ports, unknown parameters and malformed
        systemd endpoints are refused.
        """
        found = problems_of(
            self,
            {
                "listen": {
                    "tls": ["le:/certs:tcp:443", "tcp:https", "tcp:70000", "tcp:443:foo=1", "systemd:index=0", "",
                            "unix:"],
                    "admin": [8001, "onion:443"],
                }
            },
        )
        self.assertEqual(
            [where for where, _ in found],
            [f"listen.tls[{i}]" for i in range(7)] + ["listen.admin[0]", "listen.admin[1]"],
        )
        messages = [message for _, message in found]
        self.assertEqual(messages[0], "unknown or unsupported endpoint type 'le:'; use tcp:, tcp6:, unix: or systemd:")
        self.assertEqual(messages[1], "tcp: port must be a number between 0 and 65535")
        self.assertEqual(messages[2], "tcp: port must be a number between 0 and 65535")
        self.assertIn("foo", messages[3])
        self.assertEqual(messages[4], "systemd: endpoints need domain= and one of index= or name=")
        self.assertEqual(messages[5], "must not be empty")
        self.assertEqual(messages[6], "unix: endpoints need a socket path")
        self.assertEqual(messages[7], "must be a string")
        self.assertEqual(
            messages[8], "unknown or unsupported endpoint type 'onion:'; use tcp:, tcp6:, unix:, systemd: or ssl:"
        )


class TLSTests(SynchronousTestCase):
    """
    Tests for the tls section.
    """

    def test_values(self) -> None:
        """
        Timeouts and rotation are numbers stored as floats.
        """
        config = parse_config(
            {"tls": {"handshake_timeout": 3, "session_tickets": False, "ticket_key_rotation": 60}}, "/srv"
        )
        self.assertEqual(config.tls, TLSConfig(None, None, 3.0, False, 60.0))

    def test_fallback_pair(self) -> None:
        """
        fallback_cert and fallback_key go together: the missing one is
        reported.
        """
        existing = os.path.abspath(__file__)
        self.assertEqual(
            problems_of(self, {"tls": {"fallback_cert": existing}}),
            [("tls.fallback_key", "required when fallback_cert is set")],
        )
        self.assertEqual(
            problems_of(self, {"tls": {"fallback_key": existing}}),
            [("tls.fallback_cert", "required when fallback_key is set")],
        )

    def test_missing_files(self) -> None:
        """
        Fallback files must exist; the error names the resolved path.
        """
        self.assertEqual(
            problems_of(self, {"tls": {"fallback_cert": "missing.pem", "fallback_key": "/nonexistent/k.pem"}}, "/srv"),
            [
                ("tls.fallback_cert", "file not found: /srv/missing.pem"),
                ("tls.fallback_key", "file not found: /nonexistent/k.pem"),
            ],
        )

    def test_directory_is_not_a_file(self) -> None:
        """
        A directory is not accepted as a certificate file.
        """
        here = os.path.dirname(os.path.abspath(__file__))
        self.assertEqual(
            problems_of(self, {"tls": {"fallback_cert": here, "fallback_key": here}})[0],
            ("tls.fallback_cert", f"not a regular file: {here}"),
        )

    def test_ranges(self) -> None:
        """
        handshake_timeout must be > 0, ticket_key_rotation >= 60, and
        session_tickets a boolean.
        """
        self.assertEqual(
            problems_of(
                self, {"tls": {"handshake_timeout": 0, "session_tickets": "yes", "ticket_key_rotation": 59}}
            ),
            [
                ("tls.handshake_timeout", "must be greater than 0"),
                ("tls.session_tickets", "must be true or false"),
                ("tls.ticket_key_rotation", "must be at least 60"),
            ],
        )


class CertificatesTests(SynchronousTestCase):
    """
    Tests for the certificates list.
    """

    def test_hosts_override(self) -> None:
        """
        hosts is optional, lower-cased; files must exist.
        """
        existing = os.path.abspath(__file__)
        config = parse_config(
            {"certificates": [{"cert": existing, "key": existing, "hosts": ["A.Example.COM", "*.b.example.com"]}]},
            "/srv",
        )
        self.assertEqual(
            config.certificates, (StaticCertificate(existing, existing, ("a.example.com", "*.b.example.com")),)
        )

    def test_problems(self) -> None:
        """
        cert and key are required files; bad host patterns are reported by
        index.
        """
        self.assertEqual(
            problems_of(self, {"certificates": [{"key": "k.pem", "hosts": ["ok.test", "bad_host.test"]}]}),
            [
                ("certificates[0].cert", "required"),
                ("certificates[0].key", "file not found: /srv/k.pem"),
                ("certificates[0].hosts[1]", "'bad_host.test' is not a valid host name"),
            ],
        )


class RoutesTests(SynchronousTestCase):
    """
    Tests for routes and default_upstream.
    """

    def test_route(self) -> None:
        """
        A route has lower-cased host patterns, an upstream split into host and
        port, ALPN protocols and a PROXY protocol version.
        """
        config = parse_config(
            {
                "routes": [
                    {"hosts": ["Demo.Test", "*.demo.test"], "upstream": "127.0.0.1:8000"},
                    {"hosts": "v6.test", "upstream": "[::1]:9000", "alpn": ["h2"], "proxy_protocol": "v2"},
                    {"hosts": ["none.test"], "upstream": "backend_1:80", "alpn": []},
                ]
            },
            "/srv",
        )
        self.assertEqual(
            config.routes,
            (
                RouteConfig(("demo.test", "*.demo.test"), "127.0.0.1", 8000, ("http/1.1",), None),
                RouteConfig(("v6.test",), "::1", 9000, ("h2",), "v2"),
                RouteConfig(("none.test",), "backend_1", 80, (), None),
            ),
        )

    def test_upstream_problems(self) -> None:
        """
        upstream must be host:port with a port from 1 to 65535, IPv6 in
        brackets.
        """
        routes = [
            {"hosts": ["a.test"], "upstream": upstream}
            for upstream in ("localhost", "localhost:0", "localhost:65536", "::1:80", "[nope]:80", "a b:80", ":80")
        ] + [{"hosts": ["b.test"]}]
        self.assertEqual(
            problems_of(self, {"routes": routes}),
            [
                ("routes[0].upstream", "must be host:port"),
                ("routes[1].upstream", "port must be between 1 and 65535"),
                ("routes[2].upstream", "port must be between 1 and 65535"),
                ("routes[3].upstream", "must be host:port (write IPv6 addresses in brackets: [::1]:8000)"),
                ("routes[4].upstream", "[nope] is not a valid IPv6 address"),
                ("routes[5].upstream", "'a b' is not a valid host name or address"),
                ("routes[6].upstream", "must be host:port"),
                ("routes[7].upstream", "required"),
            ],
        )

    def test_host_pattern_problems(self) -> None:
        """
        Host patterns are names or a leftmost *. wildcard; labels are 1-63
        letters, digits or hyphens, names at most 253 characters; the list
        may not be empty.
        """
        long_label = "a" * 64
        long_name = ".".join(["a" * 63] * 4)
        self.assertEqual(
            problems_of(
                self,
                {
                    "routes": [
                        {
                            "hosts": ["*", "a.*.test", "test.*", "**.test", "-a.test", f"{long_label}.test", long_name,
                                      "a..test", "a.test:443"],
                            "upstream": "x:1",
                        },
                        {"hosts": [], "upstream": "x:1"},
                    ]
                },
            ),
            [
                ("routes[0].hosts[0]", "wildcard must be a single leftmost label, as in *.example.com"),
                ("routes[0].hosts[1]", "wildcard must be a single leftmost label, as in *.example.com"),
                ("routes[0].hosts[2]", "wildcard must be a single leftmost label, as in *.example.com"),
                ("routes[0].hosts[3]", "wildcard must be a single leftmost label, as in *.example.com"),
                ("routes[0].hosts[4]", "'-a.test' is not a valid host name"),
                ("routes[0].hosts[5]", f"'{long_label}.test' is not a valid host name"),
                ("routes[0].hosts[6]", f"'{long_name}' is not a valid host name"),
                ("routes[0].hosts[7]", "'a..test' is not a valid host name"),
                ("routes[0].hosts[8]", "'a.test:443' is not a valid host name"),
                ("routes[1].hosts", "must not be empty"),
            ],
        )

    def test_alpn_and_proxy_protocol_problems(self) -> None:
        """
        alpn values are h2 or http/1.1; proxy_protocol is v1, v2 or null.
        """
        self.assertEqual(
            problems_of(
                self, {"routes": [{"hosts": ["a.test"], "upstream": "x:1", "alpn": ["h3"], "proxy_protocol": 2}]}
            ),
            [
                ("routes[0].alpn[0]", "must be one of h2, http/1.1"),
                ("routes[0].proxy_protocol", "must be one of v1, v2"),
            ],
        )

    def test_duplicate_hosts(self) -> None:
        """
        A host pattern may belong to one route only (compared lower-cased).
        """
        self.assertEqual(
            problems_of(
                self,
                {
                    "routes": [
                        {"hosts": ["a.test", "*.a.test"], "upstream": "x:1"},
                        {"hosts": ["b.test", "A.TEST"], "upstream": "y:1"},
                    ]
                },
            ),
            [("routes[1].hosts[1]", "a.test is already routed by routes[0]")],
        )

    def test_default_upstream_string(self) -> None:
        """
        default_upstream as "host:port" is a route without hosts and with the
        default ALPN.
        """
        config = parse_config({"default_upstream": "Backend:8000"}, "/srv")
        self.assertEqual(config.default_route, RouteConfig((), "backend", 8000, ("http/1.1",), None))

    def test_default_upstream_mapping(self) -> None:
        """
        default_upstream as a mapping takes upstream, alpn and proxy_protocol.
        """
        config = parse_config(
            {"default_upstream": {"upstream": "[2001:db8::1]:443", "alpn": ["h2", "http/1.1"], "proxy_protocol": "v1"}},
            "/srv",
        )
        self.assertEqual(config.default_route, RouteConfig((), "2001:db8::1", 443, ("h2", "http/1.1"), "v1"))

    def test_default_upstream_problems(self) -> None:
        """
        default_upstream problems are reported at its path; hosts is not
        allowed in it.
        """
        self.assertEqual(
            problems_of(self, {"default_upstream": "nowhere"}), [("default_upstream", "must be host:port")]
        )
        self.assertEqual(
            problems_of(self, {"default_upstream": {"hosts": ["a.test"]}}),
            [("default_upstream.hosts", "unknown field"), ("default_upstream.upstream", "required")],
        )
        self.assertEqual(
            problems_of(self, {"default_upstream": 8000}),
            [("default_upstream", "must be host:port or a mapping with upstream, alpn and proxy_protocol")],
        )


class OtherSectionsTests(SynchronousTestCase):
    """
    Tests for the proxy, http, admin and logging sections and state_dir.
    """

    def test_values(self) -> None:
        """
        Given values are kept, numbers as floats where the model says so.
        """
        config = parse_config(
            {
                "state_dir": "/var/lib/kongacme",
                "proxy": {"connect_timeout": 1, "idle_timeout": 30.5},
                "http": {"mode": "proxy", "https_port": 8443, "max_header_bytes": 1024, "request_timeout": 2},
                "admin": {"token": "s3cret"},
                "logging": {"level": "debug", "format": "json", "file": "/var/log/kongacme.log"},
            },
            "/srv",
        )
        self.assertEqual(config.state_dir, "/var/lib/kongacme")
        self.assertEqual(config.proxy, ProxyConfig(1.0, 30.5))
        self.assertEqual(config.http, HTTPConfig("proxy", 8443, 1024, 2.0))
        self.assertEqual(config.admin, AdminConfig("s3cret"))
        self.assertEqual(config.logging, LoggingConfig("debug", "json", "/var/log/kongacme.log"))

    def test_problems(self) -> None:
        """
        Each rule of these sections names its field.
        """
        self.assertEqual(
            problems_of(
                self,
                {
                    "state_dir": "",
                    "proxy": {"connect_timeout": "5s", "idle_timeout": -1},
                    "http": {"mode": "bounce", "https_port": 0, "max_header_bytes": 2000000, "request_timeout": True},
                    "admin": {"token": ""},
                    "logging": {"format": "xml", "file": 1},
                },
            ),
            [
                ("state_dir", "must not be empty"),
                ("proxy.connect_timeout", "must be a number"),
                ("proxy.idle_timeout", "must be greater than 0"),
                ("http.mode", "must be one of redirect, proxy, not_found"),
                ("http.https_port", "must be between 1 and 65535"),
                ("http.max_header_bytes", "must be between 1024 and 1048576"),
                ("http.request_timeout", "must be a number"),
                ("admin.token", "must not be empty"),
                ("logging.format", "must be one of text, json"),
                ("logging.file", "must be a string"),
            ],
        )

    def test_integer_fields_refuse_fractions(self) -> None:
        """
        Integer fields refuse non-integral numbers and booleans.
        """
        self.assertEqual(
            problems_of(self, {"http": {"https_port": 443.5, "max_header_bytes": True}}),
            [("http.https_port", "must be an integer"), ("http.max_header_bytes", "must be an integer")],
        )


class IssuanceConfigTests(SynchronousTestCase):
    """
    Tests for the issuance section (kongacme's settings beside Kong's acme).
    """

    def test_defaults(self):
        """Without an issuance section, on-demand issuance holds the first handshake up to 10 s."""
        from kongacme.config import parse_config

        issuance = parse_config({}, "/tmp").issuance
        self.assertEqual(
            (issuance.on_demand, issuance.first_handshake, issuance.handshake_wait, issuance.ca_bundle),
            (True, "wait", 10.0, None),
        )

    def test_errors_name_fields(self):
        """Every invalid issuance field is reported with its path."""
        from kongacme.config import parse_config
        from kongacme.errors import ConfigError

        e = self.assertRaises(
            ConfigError,
            parse_config,
            {"issuance": {"first_handshake": "later", "orders_per_minute": 0, "ca_bundle": "/nonexistent.pem"}},
            "/tmp",
        )
        paths = [path for path, _ in e.problems]
        self.assertEqual(
            sorted(paths), ["issuance.ca_bundle", "issuance.first_handshake", "issuance.orders_per_minute"]
        )


class FleetConfigTests(SynchronousTestCase):
    """
    Tests for the fleet section.
    """

    def test_hybrid_roles_need_shared_storage(self):
        """control_plane and data_plane are refused with shm or kong storage, naming acme.storage."""
        from kongacme.config import parse_config
        from kongacme.errors import ConfigError

        acme = {"account_email": "a@b.test", "api_uri": "https://ca.test/dir"}
        for role in ("control_plane", "data_plane"):
            for storage in ("shm", "kong"):
                e = self.assertRaises(
                    ConfigError, parse_config, {"fleet": {"role": role}, "acme": dict(acme, storage=storage)}, "/tmp"
                )
                self.assertEqual([path for path, _ in e.problems], ["acme.storage"])
        ok = parse_config(
            {"fleet": {"role": "data_plane"},
             "acme": dict(acme, storage="redis", storage_config={"redis": {"host": "127.0.0.1"}})},
            "/tmp",
        )
        self.assertEqual(ok.fleet.role, "data_plane")
