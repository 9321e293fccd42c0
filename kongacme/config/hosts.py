"""
Host names, host patterns and ``host:port`` strings as the configuration
accepts them.
"""

from __future__ import annotations

import ipaddress
import re

from kongacme.config.fields import Invalid

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
#: Labels that may also hold underscores: upstreams are resolved by the
#: system resolver, where container and service names with underscores are
#: common, and stored host names may have been written by anyone.
LENIENT_LABEL = re.compile(r"^[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


def is_hostname(name: str, label: re.Pattern[str] = _LABEL) -> bool:
    """
    Whether ``name`` (lower case) is a DNS host name: dot-separated labels of
    1 to 63 letters, digits or hyphens (not at either end of a label), 253
    characters at most.
    """
    if not name or len(name) > 253:
        return False
    return all(label.match(part) for part in name.split("."))


def host_pattern(value: str) -> str:
    """
    Normalise a host pattern: an exact host name or one with a leftmost
    ``*.`` wildcard label, lower-cased.

    :raises Invalid: for anything else (IP literals pass as names of digits,
        as in Kong; ports, rightmost or inner wildcards and bare ``*`` do not).
    """
    name = value.strip().lower()
    rest = name[2:] if name.startswith("*.") else name
    if "*" in rest:
        raise Invalid("wildcard must be a single leftmost label, as in *.example.com")
    if not is_hostname(rest):
        raise Invalid(f"{value!r} is not a valid host name")
    return name


def host_port(value: str) -> tuple[str, int]:
    """
    Split ``"host:port"`` (IPv6 as ``"[::1]:8000"``) into a lower-cased host
    (IPv6 without brackets) and a port number.

    :raises Invalid: "must be host:port" or a more precise message.
    """
    host, sep, port_text = value.strip().rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise Invalid("must be host:port")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise Invalid("port must be between 1 and 65535")
    if host.startswith("[") and host.endswith("]"):
        try:
            return str(ipaddress.IPv6Address(host[1:-1])), port
        except ValueError:
            raise Invalid(f"{host} is not a valid IPv6 address") from None
    host = host.lower()
    if ":" in host:
        raise Invalid("must be host:port (write IPv6 addresses in brackets: [::1]:8000)")
    if not is_hostname(host, LENIENT_LABEL):
        raise Invalid(f"{host!r} is not a valid host name or address")
    return host, port


def server_host(value: str) -> str:
    """
    A server to connect to (Kong's ``typedefs.host``): a host name or an IP
    address (IPv6 without brackets), lower-cased.

    :raises Invalid: for anything else.
    """
    name = value.strip().lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    if not is_hostname(name, LENIENT_LABEL):
        raise Invalid(f"{value!r} is not a valid host name or IP address")
    return name


def server_name(value: str) -> str:
    """
    A TLS server name (Kong's ``typedefs.sni``): a host name, not an IP
    address, without a port.

    :raises Invalid: for anything else.
    """
    name = value.strip().lower()
    try:
        ipaddress.ip_address(name)
    except ValueError:
        pass
    else:
        raise Invalid("must be a host name, not an IP address")
    if not is_hostname(name):
        raise Invalid(f"{value!r} is not a valid host name")
    return name
