"""
An RFC 8555 (ACME) client on treq: the ``acme`` library's message classes
and JWS, josepy keys, Twisted for I/O.

- :mod:`~kongacme.acme.trust`: the HTTP client and its CA trust.
- :mod:`~kongacme.acme.transport`: signed requests, nonces, timeouts.
- :mod:`~kongacme.acme.response`: answers, links, problem documents.
- :mod:`~kongacme.acme.client`: directory and account.
- :mod:`~kongacme.acme.eab`: external account binding, ZeroSSL's API.
- :mod:`~kongacme.acme.order`: issuance, one order per certificate.
- :mod:`~kongacme.acme.challenges`: challenge solvers (http-01,
  tls-alpn-01, dns-01) and the choice among the challenges offered.
- :mod:`~kongacme.acme.polling`: waiting with ``Retry-After``.
- :mod:`~kongacme.acme.keys`: certificate and account keys.
"""

from kongacme.acme.challenges import Dns01Solver, Http01Solver
from kongacme.acme.client import AcmeClient, TermsOfServiceNotAccepted
from kongacme.acme.eab import ZEROSSL_EAB_URL, EabCredentialsError, ExternalAccountRequired
from kongacme.acme.keys import (
    account_key_from_pem,
    account_key_pem,
    generate_account_key,
    generate_private_key,
    generate_private_key_in_thread,
)
from kongacme.acme.order import AcmeIssuer, OrderFailed, issue
from kongacme.acme.polling import DEFAULT_SCHEDULE, PollSchedule, PollTimeout
from kongacme.acme.response import AcmeResponse
from kongacme.acme.transport import AcmeTransport
from kongacme.acme.trust import make_http_client

__all__ = [
    "AcmeClient",
    "AcmeIssuer",
    "AcmeResponse",
    "AcmeTransport",
    "DEFAULT_SCHEDULE",
    "Dns01Solver",
    "EabCredentialsError",
    "ExternalAccountRequired",
    "Http01Solver",
    "OrderFailed",
    "PollSchedule",
    "PollTimeout",
    "TermsOfServiceNotAccepted",
    "ZEROSSL_EAB_URL",
    "account_key_from_pem",
    "account_key_pem",
    "generate_account_key",
    "generate_private_key",
    "generate_private_key_in_thread",
    "issue",
    "make_http_client",
]
