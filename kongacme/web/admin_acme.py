"""
Kong's ``/acme`` Admin API endpoints (KONG-ACME-REFERENCE §2), with Kong's
status codes and messages, plus what Kong gets wrong done right: admission
is checked, and a running order is reported honestly.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import treq
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.logger import Logger
from twisted.web.server import Request

from kongacme.config.hosts import hostname_problem, normalize_hostname
from kongacme.errors import AcmeProblem, IssuanceError, NotAdmitted, OrderInProgress
from kongacme.web.admin import read_arguments, shown

log = Logger()

SANITY_TOKEN = "x"
SANITY_BODY = b"Not found\n"
#: What a ``POST /acme`` body may carry.
POST_FIELDS = frozenset({"host", "test_http_challenge_flow"})
NOT_CONFIGURED = "ACME is not configured: add an acme section to the configuration"


def issuance_failure(failure: Any) -> tuple[int, Any]:
    """
    The Admin API answer for a failed order (``POST /acme``, a renewal):
    400 not admitted, 409 another node's order in progress, else Kong's 500
    ``failed to update certificate: …`` with the CA's problem when there is
    one.
    """
    error = failure.value
    if isinstance(error, NotAdmitted):
        return 400, {"message": error.message}
    if isinstance(error, OrderInProgress):
        return 409, {"message": error.message}
    problem = error.to_dict() if isinstance(error, AcmeProblem) else None
    text = error.message if isinstance(error, IssuanceError) else str(error)
    body: dict[str, Any] = {"message": "failed to update certificate: %s" % (text,)}
    if problem is not None:
        body["problem"] = problem
    return 500, body


class AcmeAdmin:
    """
    Handlers for ``POST /acme``.

    :param get_manager: returns the current
        :class:`kongacme.issuance.manager.CertificateManager`, or ``None``
        when no ``acme`` section is configured.
    :param challenge_port: the port the CA validates http-01 on (80); the
        sanity check fetches ``http://<host>:<port>/.well-known/acme-challenge/x``.
    :param http_client: a treq ``HTTPClient`` for the sanity check (``None``:
        treq's default).
    :param reactor: for the sanity check's timeout.
    """

    def __init__(self, get_manager: Callable[[], Any], reactor, challenge_port: int = 80,
                 http_client: Optional[Any] = None):
        self._get_manager = get_manager
        self._reactor = reactor
        self.challenge_port = challenge_port
        self._http = http_client

    def post(self, request: Request) -> tuple[int, Any] | Deferred:
        """``POST /acme``: issue a certificate for ``host`` (or test the http-01 path)."""
        args = read_arguments(request, POST_FIELDS)
        host = args.get("host")
        if not isinstance(host, str) or not host or "," in host or " " in host:
            return 400, {"message": "host must be provided and containing a single domain"}
        if ":" in host:
            return 400, {"message": "port is not allowed in host"}
        host = normalize_hostname(host)
        # "*.example.com" orders the wildcard certificate (issuance.wildcard).
        wildcard = host.startswith("*.")
        problem = hostname_problem(host[2:] if wildcard else host)
        if problem is not None:
            # Refused before any order: the CA would refuse it as malformed
            # and the attempt would still count against its rate limits.
            return 400, {"message": "host %s is not allowed: %s" % (shown(host), problem)}
        manager = self._get_manager()
        if manager is None:
            return 404, {"message": NOT_CONFIGURED}
        if wildcard and not getattr(manager.admission, "wildcard", False):
            return 400, {"message": "host %s is not allowed: wildcard certificates need issuance.wildcard: true"
                         % (shown(host),)}
        flow = args.get("test_http_challenge_flow")
        if flow is True or (isinstance(flow, str) and flow.lower() == "true"):
            return self._sanity_check(manager, host)
        return self._issue(manager, host)

    def _issue(self, manager: Any, host: str) -> Deferred:
        def created(_: object) -> tuple[int, Any]:
            return 201, {"message": "certificate for host %s is created" % (host,)}

        return manager.obtain(host, origin="admin", force=True).addCallbacks(created, issuance_failure)

    @inlineCallbacks
    def _sanity_check(self, manager: Any, host: str):
        reason = manager.admission.reason(host)
        if reason is not None:
            return 400, {"message": "problem found running sanity check for %s: %s" % (host, reason)}
        url = "http://%s:%d/.well-known/acme-challenge/%s" % (host, self.challenge_port, SANITY_TOKEN)
        client = self._http or treq
        try:
            response = yield client.get(url, timeout=10, reactor=self._reactor) if client is treq else client.get(
                url, timeout=10
            )
            body = yield response.content()
        except Exception as e:
            return 400, {"message": "problem found running sanity check for %s: %s" % (host, e)}
        if response.code == 404 and body == SANITY_BODY:
            return 200, {"message": "sanity test for host %s passed" % (host,)}
        return 400, {
            "message": "problem found running sanity check for %s: unexpected status code %d with body %r"
            % (host, response.code, body[:200].decode("utf-8", "replace"))
        }


def install(admin_site: Any, acme_admin: AcmeAdmin) -> None:
    """Add the ``/acme`` routes to the Admin API site."""
    admin_site.resource.add_route(b"POST", b"/acme", acme_admin.post)


