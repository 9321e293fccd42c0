"""
kongacme's fallback CAs, beside Kong's ``acme`` object:
``issuance.fallback_issuers``, the CAs an order moves on to, in order, when
the primary (``acme.api_uri``) fails in a way that is the CA's fault.
"""

from __future__ import annotations

from typing import Any

import attrs

from kongacme.config.acme import api_uri_value, base64url_value, email_value
from kongacme.config.fields import REQUIRED, Context, FilePath, Str, Then, index, join
from kongacme.config.records import Field, Record, valid


@attrs.frozen
class FallbackIssuerConfig:
    """
    One fallback CA. Unset fields take the primary's value where that makes
    sense (:meth:`resolved`).

    :ivar api_uri: the CA's directory URL (a bare host gets ``/directory``,
        as ``acme.api_uri``).
    :ivar account_email: the account's contact; ``None``: ``acme.account_email``.
    :ivar eab_kid: external account binding key id for this CA (never
        taken from the primary: EAB credentials belong to one CA).
    :ivar eab_hmac_key: its HMAC key, base64url.
    :ivar ca_bundle: PEM file of CAs trusted for this CA's HTTPS;
        ``None``: ``issuance.ca_bundle``.
    """

    api_uri: str
    account_email: str | None = None
    eab_kid: str | None = None
    eab_hmac_key: str | None = attrs.field(default=None, repr=False)
    ca_bundle: str | None = None


def _check_fallback_issuer(values: dict[str, Any], ctx: Context, path: str) -> None:
    # EAB needs both halves, as in acme.
    for given, missing in (("eab_kid", "eab_hmac_key"), ("eab_hmac_key", "eab_kid")):
        if valid(values, given, missing) and values[given] is not None and values[missing] is None:
            ctx.problem(join(path, missing), f"required when {given} is set")


FALLBACK_ISSUER = Record(
    FallbackIssuerConfig,
    (
        Field("api_uri", Then(Str(), api_uri_value), REQUIRED),
        Field("account_email", Then(Str(), email_value)),
        Field("eab_kid", Str()),
        Field("eab_hmac_key", Then(Str(), base64url_value)),
        Field("ca_bundle", FilePath(must_exist=True)),
    ),
    checks=(_check_fallback_issuer,),
)


def check_fallback_issuers(values: dict[str, Any], ctx: Context, path: str) -> None:
    """
    Checks of ``issuance.fallback_issuers`` against the whole config (a
    :data:`kongacme.config.daemon.DAEMON` check): each directory appears
    once and is not the primary's, and fallbacks need an ``acme`` section.
    """
    if not valid(values, "issuance", "acme"):
        return
    fallbacks = values["issuance"].fallback_issuers
    if not fallbacks:
        return
    where = join(path, "issuance.fallback_issuers")
    acme = values["acme"]
    if acme is None:
        ctx.problem(where, "needs an acme section (the primary CA)")
        return
    seen = {_same(acme.api_uri): "acme.api_uri"}
    for i, fallback in enumerate(fallbacks):
        here = join(index(where, i), "api_uri")
        key = _same(fallback.api_uri)
        if key in seen:
            ctx.problem(here, "%s is already %s" % (fallback.api_uri, seen[key]))
        else:
            seen[key] = index("issuance.fallback_issuers", i) + ".api_uri"


def _same(uri: str) -> str:
    return uri.rstrip("/").lower()
