"""
Which failures of an order are the CA's fault, so that another CA may
succeed where it failed (``issuance.fallback_issuers``), and each CA's
health as the daemon saw it.
"""

from __future__ import annotations

from typing import Any, Optional

import attrs
from twisted.internet.error import ConnectError, TimeoutError as ConnectTimeout

from kongacme.acme.polling import PollTimeout
from kongacme.errors import AcmeProblem, AcmeTimeout, AcmeTransportError

#: RFC 8555 §6.7 problem types that say the CA, not the request, is at
#: fault. ``badNonce`` is retried by the transport first; still failing,
#: the CA is rejecting fresh nonces.
CA_FAULT_TYPES = frozenset(("rateLimited", "serverInternal", "badNonce"))

_ACME_ERROR = "urn:ietf:params:acme:error:"

#: Seconds a CA that timed out is passed over for new orders while a later
#: CA remains: each order would otherwise wait the whole request timeout
#: (30 s by default, longer than a first visitor's handshake_wait) before
#: its fallback. A refused connection or an error answer fails fast, so it
#: is asked again at once.
TIMEOUT_REST = 60.0


def ca_at_fault(error: BaseException) -> bool:
    """
    Whether an order that failed with ``error`` might succeed at another CA
    at once: the CA could not be reached, timed out, answered something
    that is not ACME, answered 5xx, or limited our rate (HTTP 429 or
    ``rateLimited``, RFC 8555 §6.6).

    Not the CA's fault, so no fallback: a refused name
    (``rejectedIdentifier``, ``caa``), a challenge the CA could not
    validate (``connection``, ``dns``, ``incorrectResponse``,
    ``unauthorized``, ``tls``), a malformed request or CSR, an account or
    EAB problem, a DNS provider or storage error. Another CA would refuse
    those too, or they need the operator.
    """
    if isinstance(error, AcmeProblem):
        kind = error.type[len(_ACME_ERROR):] if error.type.startswith(_ACME_ERROR) else None
        if kind in CA_FAULT_TYPES:
            return True
        if error.status is not None and (error.status == 429 or 500 <= error.status <= 599):
            # A problem a CA answered with 5xx or 429 whatever its type
            # (a proxy's 503 page becomes about:blank with status 503).
            return True
        return False
    # Unreachable, refused, reset, timed out, or not ACME at all;
    # PollTimeout: the CA never finished the order.
    return isinstance(error, (AcmeTransportError, PollTimeout, ConnectError, ConnectTimeout))


@attrs.define
class IssuerHealth:
    """
    One CA's availability as the daemon's orders saw it.

    :ivar directory: the CA's directory URL.
    :ivar available: the last order there did not fail through the CA's
        fault.
    :ivar down_since: when it started failing (epoch seconds), or ``None``.
    :ivar last_error: the last failure blamed on it.
    :ivar retry_after: until when (epoch seconds) the CA is passed over
        while a later CA remains: it asked so (``Retry-After`` with a 429 /
        503), or it timed out (:data:`TIMEOUT_REST`); else ``None``.
    :ivar issued: certificates it issued.
    :ivar failed: orders it failed through its fault.
    :ivar refused: orders it failed through no fault of its own.
    """

    directory: str
    available: bool = True
    down_since: Optional[float] = None
    last_error: Optional[str] = None
    retry_after: Optional[float] = None
    issued: int = 0
    failed: int = 0
    refused: int = 0

    def succeeded(self) -> None:
        """The CA issued a certificate."""
        self.issued += 1
        self._up()

    def answered(self, error: BaseException) -> None:
        """The CA answered, refusing the order through no fault of its own."""
        self.refused += 1
        self._up()

    def ca_failed(self, error: BaseException, now: float) -> None:
        """The order failed through the CA's fault (:func:`ca_at_fault`)."""
        self.failed += 1
        self.last_error = str(error)
        if self.available:
            self.available = False
            self.down_since = now
        wait = getattr(error, "retry_after", None)
        if not wait and isinstance(error, (AcmeTimeout, PollTimeout, ConnectTimeout)):
            wait = TIMEOUT_REST
        self.retry_after = now + wait if wait else None

    def resting(self, now: float) -> bool:
        """Whether the CA is passed over at ``now`` (``Retry-After``, or a recent timeout)."""
        return self.retry_after is not None and now < self.retry_after

    def _up(self) -> None:
        self.available = True
        self.down_since = None
        self.retry_after = None

    def status(self) -> dict[str, Any]:
        """The health as a JSON-able dict (Admin API, status page)."""
        return attrs.asdict(self)
