"""
External account binding (RFC 8555 §7.3.4): tying a new ACME account to an
account the CA already knows, with a key id and an HMAC key it handed out;
and fetching those from ZeroSSL's API when none are configured (what Kong
does, see the reference §5).
"""

from __future__ import annotations

import binascii
from typing import Any, Optional
from urllib.parse import urlencode, urlsplit

import josepy as jose
from acme import messages
from twisted.logger import Logger

from kongacme.acme.transport import AcmeTransport
from kongacme.errors import AcmeError

_log = Logger()

#: ZeroSSL's endpoint that issues EAB credentials for an email address.
ZEROSSL_EAB_URL = "https://api.zerossl.com/acme/eab-credentials-email"


class ExternalAccountRequired(AcmeError):
    """
    The CA requires external account binding and none is configured (nor
    could be fetched).

    :ivar directory_url: the CA's directory.
    """

    def __init__(self, directory_url: str, reason: str = ""):
        self.directory_url = directory_url
        message = "the CA (%s) requires external account binding: set acme.eab_kid and acme.eab_hmac_key" % (
            directory_url,
        )
        if reason:
            message += " (%s)" % (reason,)
        super().__init__(message)


class EabCredentialsError(AcmeError):
    """
    ZeroSSL's API did not hand out EAB credentials.

    :ivar url: the endpoint asked.
    :ivar reason: what it answered.
    """

    def __init__(self, url: str, reason: str):
        self.url = url
        self.reason = reason
        super().__init__("%s: %s" % (url, reason))


def is_zerossl(directory_url: str) -> bool:
    """Whether a directory URL belongs to ZeroSSL (host ``zerossl.com`` or below)."""
    host = (urlsplit(directory_url).hostname or "").lower().rstrip(".")
    return host == "zerossl.com" or host.endswith(".zerossl.com")


def eab_binding(
    account_key: jose.JWK,
    kid: str,
    hmac_key: str,
    directory: messages.Directory,
) -> dict[str, Any]:
    """
    The ``externalAccountBinding`` member of a ``newAccount`` request: a JWS
    over the account's public JWK, MACed (HS256) with the CA's key, whose
    protected header names ``kid`` and the ``newAccount`` URL (§7.3.4).

    :param account_key: the account key (its public half is bound).
    :param kid: the key identifier from the CA.
    :param hmac_key: the MAC key, base64url (padding optional).
    :raises ValueError: when ``hmac_key`` is not base64url.
    """
    try:
        decoded = jose.b64decode(hmac_key)
    except (binascii.Error, ValueError, TypeError) as e:
        raise ValueError("eab_hmac_key is not base64url (%s)" % (e,)) from None
    if not decoded:
        raise ValueError("eab_hmac_key is empty")
    return messages.ExternalAccountBinding.from_data(
        account_public_key=account_key.public_key(),
        kid=kid,
        hmac_key=hmac_key,
        directory=directory,
    )


async def fetch_zerossl_eab(
    transport: AcmeTransport,
    email: str,
    url: str = ZEROSSL_EAB_URL,
) -> tuple[str, str]:
    """
    Ask ZeroSSL for EAB credentials for ``email``: a form POST of
    ``email=<address>``, answered with ``{"success": true, "eab_kid": …,
    "eab_hmac_key": …}``.

    :param transport: sends the (unsigned) request with its timeout.
    :param url: the endpoint; tests point it at a fake.
    :return: ``(kid, hmac_key)``.
    :raises EabCredentialsError: when ZeroSSL refuses or answers something
        else.
    """
    response = await transport.request(
        "POST",
        url,
        body=urlencode({"email": email}).encode("ascii"),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    jobj = response.json()
    kid: Optional[Any] = jobj.get("eab_kid")
    hmac_key: Optional[Any] = jobj.get("eab_hmac_key")
    if (
        jobj.get("success") is not True
        or not isinstance(kid, str)
        or not isinstance(hmac_key, str)
        or not kid
        or not hmac_key
    ):
        raise EabCredentialsError(url, "no EAB credentials issued for %s: %s" % (email, _short(jobj)))
    _log.info("fetched EAB credentials for {email} from {url}", email=email, url=url)
    return kid, hmac_key


def _short(jobj: dict[str, Any]) -> str:
    text = repr(jobj.get("error", jobj))
    return text if len(text) <= 200 else text[:200] + "…"
