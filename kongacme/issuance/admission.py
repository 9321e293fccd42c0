"""
Which host names may get a certificate: Kong's admission rules, with its
wildcard bug fixed.
"""

from __future__ import annotations

import ipaddress
from typing import Iterable

from kongacme.config.hosts import hostname_problem, normalize_hostname


class Admission:
    """
    Kong's ``domains`` / ``allow_any_domain`` rules.

    A host is normalised (:func:`~kongacme.config.hosts.normalize_hostname`:
    lower-cased, a trailing dot dropped) and must be a host name a CA
    accepts (letters, digits and hyphens: a name with ``_`` is refused here,
    before an order spends a rate-limit slot on it); IP addresses are never admitted (they cannot be
    ACME ``dns`` identifiers, whatever ``enable_ipv4_common_name`` says);
    with ``allow_any_domain`` every valid host name is admitted; otherwise
    it must equal an entry of ``domains`` or end with the suffix of a
    ``*.`` entry — any depth of subdomain, never the apex, dots literal
    (Kong bug #7834 matched ``abc.gw-alpha.x`` for ``*.alpha.x``).

    With ``wildcard`` (``issuance.wildcard``), the names exactly one label
    below a ``*.example.com`` entry share one certificate for
    ``*.example.com`` (with ``example.com`` in it too when that is an
    entry): :meth:`certificate_name` maps a host to the name its
    certificate is ordered, stored and renewed under, and that wildcard
    name is admitted itself.

    :param domains: exact names and ``*.`` patterns.
    :param allow_any_domain: admit every valid name.
    :param wildcard: serve ``*.`` entries with wildcard certificates.
    """

    def __init__(self, domains: Iterable[str] = (), allow_any_domain: bool = False, wildcard: bool = False):
        self.allow_any_domain = allow_any_domain
        self.wildcard = wildcard
        self._exact: set[str] = set()
        self._suffixes: set[str] = set()
        for pattern in domains:
            pattern = normalize_hostname(pattern)
            if pattern.startswith("*."):
                self._suffixes.add(pattern[1:])  # ".example.com"
            else:
                self._exact.add(pattern)

    def reason(self, host: str | None) -> str | None:
        """
        Why ``host`` is not admitted, or ``None`` if it is.
        """
        if host is None:
            return "no host name"
        normalized = normalize_hostname(host)
        if normalized.startswith("*."):
            # A wildcard certificate's own name (POST /acme host=*.x).
            problem = hostname_problem(normalized[2:])
            if problem is not None:
                return problem
            if not self.wildcard:
                return "wildcard certificates need issuance.wildcard: true"
            if normalized[1:] in self._suffixes:
                return None
            return "host is not included in plugin config.domains"
        try:
            ipaddress.ip_address(normalized)
            return "IP addresses cannot get certificates here"
        except ValueError:
            pass
        problem = hostname_problem(normalized)
        if problem is not None:
            return problem
        if normalized.replace(".", "").isdigit():
            return "IP addresses cannot get certificates here"
        if self.allow_any_domain:
            return None
        if normalized in self._exact:
            return None
        dot = normalized.find(".")
        while dot != -1:
            if normalized[dot:] in self._suffixes:
                return None
            dot = normalized.find(".", dot + 1)
        return "host is not included in plugin config.domains"

    def admits(self, host: str | None) -> bool:
        """Whether ``host`` may get a certificate."""
        return self.reason(host) is None

    def certificate_name(self, host: str) -> str:
        """
        The name ``host``'s certificate is ordered and stored under: with
        ``wildcard``, ``*.example.com`` for a host one label below a
        ``*.example.com`` entry (and for ``example.com`` itself when it is
        an entry too); otherwise ``host``. Deeper names keep their own.
        """
        name = normalize_hostname(host)
        if not self.wildcard or name.startswith("*."):
            return name
        dot = name.find(".")
        if dot > 0 and name[dot:] in self._suffixes:
            return "*" + name[dot:]
        if name in self._exact and "." + name in self._suffixes:
            return "*." + name
        return name

    def certificate_names(self, certificate_name: str) -> tuple[str, ...]:
        """
        Every name the certificate ordered under ``certificate_name``
        holds: the name, and for a wildcard its base name when that is an
        entry of ``domains`` (RFC 8555 §7.1.3: a wildcard does not cover
        its base name).
        """
        name = normalize_hostname(certificate_name)
        if self.wildcard and name.startswith("*.") and name[2:] in self._exact:
            return (name, name[2:])
        return (name,)
