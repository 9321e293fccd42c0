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


def normalize_hostname(value: str) -> str:
    """
    The form a host name is kept, compared and stored in: surrounding
    white space removed, lower-cased, and one trailing dot (a fully
    qualified ``example.com.``) dropped. Only normalises; check the result
    with :func:`is_hostname` or :func:`hostname_problem`.

    Every place a name enters (configuration, the Admin API, admission)
    goes through this one function, so ``Example.COM.`` and
    ``example.com`` are the same name everywhere, as they are to DNS and to
    a TLS client's SNI.
    """
    name = value.strip().lower()
    if name.endswith(".") and not name.endswith(".."):
        name = name[:-1]
    return name


def hostname_problem(name: str) -> str | None:
    """
    Why ``name`` (normalised) cannot be in a certificate, or ``None``.
    Underscores are named: names with them are valid to DNS and to SNI but
    CAs refuse them as malformed, so ordering one only costs a rate-limit
    slot.
    """
    if is_hostname(name):
        return None
    if is_hostname(name, LENIENT_LABEL):
        return "not a valid host name: '_' is not allowed in a certificate's names (letters, digits and hyphens only)"
    return "not a valid host name"


def host_pattern(value: str) -> str:
    """
    Normalise a host pattern: an exact host name or one with a leftmost
    ``*.`` wildcard label, lower-cased, a trailing dot dropped
    (:func:`normalize_hostname`).

    :raises Invalid: for anything else (IP literals pass as names of digits,
        as in Kong; ports, rightmost or inner wildcards and bare ``*`` do not).
    """
    name = normalize_hostname(value)
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


def is_loopback(host: str) -> bool:
    """
    Whether ``host`` (an address to listen on) is a loopback address:
    ``127.0.0.0/8``, ``::1`` (also IPv4-mapped) or the name ``localhost``.
    """
    name = normalize_hostname(host).strip("[]")
    if name == "localhost":
        return True
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def _description_parts(description: str) -> tuple[str, list[str], dict[str, str]]:
    # A Twisted endpoint description: "kind:arg:key=value", with "\:" for
    # a colon inside a value (an IPv6 address).
    parts: list[str] = []
    current = ""
    escaped = False
    for char in description:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for part in parts[1:]:
        key, equals, value = part.partition("=")
        if equals:
            kwargs[key] = value
        else:
            args.append(part)
    return parts[0].strip().lower(), args, kwargs


def listener_exposure(description: str) -> str | None:
    """
    Whether a server endpoint description (``tcp:8001:interface=127.0.0.1``)
    may be reached from other machines: ``None`` for a loopback address or
    a ``unix:`` socket, else how it is exposed (for a message).
    A ``systemd:`` socket is passed in already bound, to an address the
    configuration does not show, so it counts as exposed.
    """
    kind, args, kwargs = _description_parts(description)
    if kind == "unix":
        return None
    if kind == "systemd":
        return "is a socket systemd passes in, which may listen on any address"
    interface = kwargs.get("interface")
    if interface is None and kind in ("tcp", "tcp6") and len(args) > 1:
        interface = args[1]
    if not interface:
        return "listens on every interface"
    if is_loopback(interface):
        return None
    try:
        if ipaddress.ip_address(interface.strip("[]")).is_unspecified:
            return "listens on every interface"
    except ValueError:
        return f"listens on {interface}, which may not be a loopback address"
    return f"listens on {interface}, not a loopback address"
