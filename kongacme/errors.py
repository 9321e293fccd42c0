"""
Exceptions raised by kongacme, small classes with fields.
"""

from __future__ import annotations


class ConfigError(Exception):
    """
    A configuration file is invalid.

    :ivar problems: list of ``(path, message)`` pairs, e.g.
        ``("acme.rsa_key_size", "must be one of 2048, 3072, 4096")``.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(f"{path}: {message}" if path else message for path, message in self.problems)


class CertificateError(Exception):
    """
    A certificate or private key could not be loaded.

    :ivar source: where it came from (a path or a storage key).
    :ivar reason: what is wrong with it.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ClientHelloError(Exception):
    """
    The first bytes on a TLS listener are not a TLS ClientHello we accept.
    """


class ResponseTooLarge(Exception):
    """
    An HTTP answer's body went past the size we read
    (:func:`kongacme.response_body.read_body`).

    :ivar limit: the limit, in bytes.
    """

    def __init__(self, limit: int):
        self.limit = limit
        super().__init__("answer larger than %d bytes" % (limit,))


class AcmeError(Exception):
    """
    Something went wrong talking to an ACME CA. Subclasses say what.
    """


class AcmeProblem(AcmeError):
    """
    The CA answered with an RFC 7807 problem document (RFC 8555 §6.7).

    :ivar type: the problem type URI, e.g.
        ``urn:ietf:params:acme:error:rateLimited``.
    :ivar detail: the CA's human-readable explanation.
    :ivar status: the HTTP status code, if known.
    :ivar retry_after: seconds the CA asked us to wait (``Retry-After``),
        or ``None``.
    :ivar subproblems: per-identifier problems (RFC 8555 §6.7.1), as a
        tuple of ``AcmeProblem``.
    """

    def __init__(
        self,
        type: str,
        detail: str = "",
        status: int | None = None,
        retry_after: float | None = None,
        subproblems: tuple["AcmeProblem", ...] = (),
    ):
        self.type = type
        self.detail = detail
        self.status = status
        self.retry_after = retry_after
        self.subproblems = tuple(subproblems)
        super().__init__(str(self))

    def __str__(self) -> str:
        text = "%s: %s" % (self.type, self.detail) if self.detail else self.type
        if self.status is not None:
            text += " (HTTP %d)" % (self.status,)
        return text

    def to_dict(self) -> dict:
        """The problem as a JSON-able dict (for logs and API answers)."""
        result: dict = {"type": self.type, "detail": self.detail, "status": self.status}
        if self.retry_after is not None:
            result["retry_after"] = self.retry_after
        if self.subproblems:
            result["subproblems"] = [p.to_dict() for p in self.subproblems]
        return result


class AcmeTransportError(AcmeError):
    """
    The CA could not be reached or answered something that is not ACME:
    refused, timed out, closed mid-response, malformed JSON.

    :ivar url: what was requested.
    :ivar reason: what went wrong.
    """

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__("%s: %s" % (url, reason))


class AcmeTimeout(AcmeTransportError):
    """
    The CA did not answer within the request timeout (or the connection
    attempt timed out): the costly way for a CA to be down.
    """


class IssuanceError(Exception):
    """
    A certificate could not be obtained for a host.

    :ivar host: the host name.
    :ivar message: Kong-style explanation, shown by the Admin API.
    """

    def __init__(self, host: str, message: str):
        self.host = host
        self.message = message
        super().__init__(message)


class NotAdmitted(IssuanceError):
    """The host is not admitted by ``domains`` / ``allow_any_domain``."""


class BackoffActive(IssuanceError):
    """
    A previous order for the host failed recently.

    :ivar remaining: seconds until a new order may start.
    """

    def __init__(self, host: str, remaining: float):
        self.remaining = remaining
        super().__init__(
            host,
            "please try again in %d seconds for host %s because of previous failure; "
            "this is configurable with config.fail_backoff_minutes" % (max(1, round(remaining)), host),
        )


class OrderInProgress(IssuanceError):
    """Another process holds the order lock for the host."""

    def __init__(self, host: str):
        super().__init__(host, "an order for host %s is already in progress on another node" % (host,))


class StoragePaused(IssuanceError):
    """The shared storage is unreachable: new orders wait until it returns."""

    def __init__(self, host: str):
        super().__init__(
            host,
            "storage is unavailable: new orders are paused until it returns (certificates held are still served); "
            "host %s" % (host,),
        )


class DNSError(Exception):
    """
    A DNS server refused or did not answer an update or a query made to
    answer a dns-01 challenge (a wrong TSIG secret, a zone that does not
    allow updates, a server that is down).

    :ivar server: ``host:port`` of the server asked.
    :ivar reason: what went wrong, e.g. ``"update of TXT
        _acme-challenge.example.com in zone example.com refused: TSIG
        BADSIG: the secret of key acme-key is not the server's"``.
    """

    def __init__(self, server: str, reason: str):
        self.server = server
        self.reason = reason
        super().__init__("DNS server %s: %s" % (server, reason))
