"""
The Admin API described as an OpenAPI 3.0 document, served by
``GET /openapi.json``; the tests validate it and fuzz the live API against
it (schemathesis).

Every route answers 401 without the bearer token when ``admin.token`` is
set, 408 for a request not received in ``admin.request_timeout``, 413 for
a body over 64 KiB, 415 for a body that is not JSON or a form and 431 for
a request head over ``admin.max_header_bytes``, so those are listed on
every operation.
"""

from __future__ import annotations

import copy
from typing import Any

from twisted.web.server import Request

from kongacme import __version__

_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": "#/components/schemas/" + name}


def _message(description: str) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": _ref("Message")}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_COMMON = {
    "401": {"$ref": "#/components/responses/Unauthorized"},
    "408": {"$ref": "#/components/responses/Timeout"},
    "413": {"$ref": "#/components/responses/TooLarge"},
    "415": {"$ref": "#/components/responses/UnsupportedMediaType"},
    "431": {"$ref": "#/components/responses/HeadTooLarge"},
}
_NOT_CONFIGURED = "No `acme` section is configured (Kong: the plugin is not configured)."
_HOST = {
    "name": "host",
    "in": "path",
    "required": True,
    "description": "A host name as stored (lower-cased; `*.` leftmost label allowed; one trailing dot is "
    "dropped). Percent-encoding, ports, control characters and names over 253 characters answer 400.",
    "schema": {"type": "string", "minLength": 1, "maxLength": 254,
               "pattern": r"^(\*\.)?[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.?$"},
}
_FLAG = {"oneOf": [{"type": "boolean"}, {"type": "string"}]}


def _operation(summary: str, description: str, responses: dict[str, Any], **more: Any) -> dict[str, Any]:
    operation = {"summary": summary, "description": description, "responses": {**responses, **_COMMON}}
    operation.update(more)
    return operation


def _body(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = list(required)
    form = {name: {"type": "string"} for name in properties}
    form_schema: dict[str, Any] = {"type": "object", "properties": form, "additionalProperties": False}
    if required:
        form_schema["required"] = list(required)
    return {
        "required": bool(required),
        "description": "A JSON object or a form (also accepted in the query string); other fields answer 400.",
        "content": {_JSON: {"schema": schema}, _FORM: {"schema": form_schema}},
    }


_SCHEMAS: dict[str, Any] = {
    "Message": {
        "type": "object",
        "required": ["message"],
        "properties": {"message": {"type": "string"}},
    },
    "Renewal": {
        "type": "object",
        "nullable": True,
        "description": "kongacme: the renewal service's view of the host (null when it does not track it).",
        "properties": {
            "host": {"type": "string"},
            "not_before": {"type": "string", "nullable": True},
            "not_after": {"type": "string", "nullable": True},
            "seconds_left": {"type": "integer", "nullable": True},
            "issuer": {"type": "string", "nullable": True},
            "admitted": {"type": "boolean"},
            "renewal_due": {"type": "string", "nullable": True},
            "renewal_rule": {"type": "string"},
            "ari_window": {"type": "array", "nullable": True, "items": {"type": "string"}},
            "next_attempt": {"type": "string", "nullable": True},
            "last_attempt": {"type": "string", "nullable": True},
            "last_success": {"type": "string", "nullable": True},
            "last_error": {"type": "string", "nullable": True},
            "failures_in_a_row": {"type": "integer"},
        },
    },
    "Certificate": {
        "type": "object",
        "description": "Kong's fields, plus kongacme's `renewal` and `acme_issuer`.",
        "required": ["digest", "host", "issuer_cn", "not_before", "not_after", "valid", "serial_number",
                     "pubkey_type", "renewal", "acme_issuer"],
        "properties": {
            "digest": {"type": "string", "description": "SHA-1 fingerprint, upper-case colon hex",
                       "pattern": "^[0-9A-F]{2}(:[0-9A-F]{2}){19}$"},
            "host": {"type": "string"},
            "issuer_cn": {"type": "string", "nullable": True},
            "not_before": {"type": "string", "description": "%Y-%m-%d %H:%M:%S, UTC"},
            "not_after": {"type": "string", "description": "%Y-%m-%d %H:%M:%S, UTC"},
            "valid": {"type": "boolean", "description": "not_before < now < not_after"},
            "serial_number": {"type": "string", "description": "upper-case colon hex"},
            "pubkey_type": {"type": "string", "description": "rsaEncryption or id-ecPublicKey"},
            "renewal": _ref("Renewal"),
            "acme_issuer": {
                "type": "object", "nullable": True,
                "description": "the CA that issued it as kongacme recorded it (null: not recorded)",
                "required": ["directory", "fallback"],
                "properties": {"directory": {"type": "string", "description": "the CA's directory URL"},
                               "fallback": {"type": "boolean", "description": "one of issuance.fallback_issuers"}},
            },
        },
    },
}

_PATHS: dict[str, Any] = {
    "/health": {
        "get": _operation(
            "Liveness",
            "Always 200 while the daemon runs.",
            {"200": _json("Alive.", {"type": "object", "required": ["status"],
                                     "properties": {"status": {"type": "string", "enum": ["ok"]}}})},
        )
    },
    "/status": {
        "get": _operation(
            "Daemon status",
            "Version, listeners, certificate names, reloads and issuance counters.",
            {"200": _json("The status.", {"type": "object"})},
        )
    },
    "/acme": {
        "post": _operation(
            "Issue a certificate (Kong)",
            "Orders a certificate for `host` and waits for it. With `test_http_challenge_flow` "
            "(true or \"true\") only checks that the CA could reach the http-01 path.",
            {
                "201": _message("Issued: `certificate for host H is created`."),
                "200": _message("Sanity check passed."),
                "400": _message(
                    "No or bad host (a name no CA issues for, e.g. with `_`, is refused before ordering), "
                    "host not admitted, sanity check failed, bad body."
                ),
                "404": _message(_NOT_CONFIGURED),
                "409": _message("Another node's order for the host is in progress."),
                "500": _message("`failed to update certificate: …` (the CA's problem in `problem`)."),
            },
            requestBody=_body({"host": {"type": "string"}, "test_http_challenge_flow": _FLAG}, ("host",)),
        ),
        "patch": _operation(
            "Renew all (Kong)",
            "Starts a renewal pass over every managed host in the background; its outcome is logged "
            "(and shown per host in `renewal`).",
            {
                "202": _message("`Renewal process started successfully`."),
                "400": _message("A body field was given (none is read)."),
                "404": _message(_NOT_CONFIGURED),
            },
        ),
    },
    "/acme/certificates": {
        "get": _operation(
            "List stored certificates (Kong)",
            "Every certificate under `kong_acme:cert_key:` in storage (corrupt values are logged and "
            "skipped), sorted by host.",
            {
                "200": _json("The certificates.", {"type": "object", "required": ["data"], "properties": {
                    "data": {"type": "array", "items": _ref("Certificate")}}}),
                "400": _message("A body field was given."),
                "404": _message(_NOT_CONFIGURED),
                "503": _message("Storage unavailable."),
            },
            parameters=[{
                "name": "invalid_only",
                "in": "query",
                "required": False,
                "description": "Only certificates that are not valid now. Any value is true except 0, false, "
                "no, off (Kong takes any value as true).",
                "schema": {"type": "string"},
            }],
        )
    },
    "/acme/certificates/{host}": {
        "parameters": [_HOST],
        "get": _operation(
            "One stored certificate (Kong)",
            "The stored certificate for `host`.",
            {
                "200": _json("The certificate.", {"type": "object", "required": ["data"],
                                                  "properties": {"data": _ref("Certificate")}}),
                "400": _message("Invalid host."),
                "404": _message("`Certificate for host H not found in storage` (or ACME not configured)."),
                "503": _message("Storage unavailable."),
            },
        ),
        "delete": _operation(
            "Delete a certificate (kongacme)",
            "Removes the certificate and renewal keys from storage, the host from the certificate cache "
            "(unless a static certificate serves it) and from the renewal service. With `revoke` the "
            "certificate is first revoked at the CA (RFC 8555 §7.6, reason 0) and nothing is deleted if "
            "that fails. Admission is unchanged: on-demand issuance orders again on the next handshake.",
            {
                "200": _message("Deleted (and revoked)."),
                "400": _message("Invalid host or body."),
                "404": _message("Not in storage, or ACME not configured."),
                "409": _message("Revocation asked but the stored value is unreadable."),
                "502": _message("The CA refused the revocation or could not be reached."),
                "503": _message("Storage unavailable."),
            },
            parameters=[{
                "name": "revoke",
                "in": "query",
                "required": False,
                "description": "Revoke at the CA first (same truth rule as `invalid_only`).",
                "schema": {"type": "string"},
            }],
            requestBody=_body({"revoke": _FLAG}),
        ),
    },
    "/acme/certificates/{host}/renew": {
        "parameters": [_HOST],
        "post": _operation(
            "Renew one host now (kongacme)",
            "Renews a host the renewal service manages, whatever its due date, and waits for it.",
            {
                "200": _json("Renewed.", {"type": "object", "required": ["message"], "properties": {
                    "message": {"type": "string"}, "data": _ref("Certificate")}}),
                "400": _message("Invalid host, host no longer admitted, or a body field was given."),
                "404": _message("The host is not managed, or ACME not configured."),
                "409": _message("Another node's order for the host is in progress."),
                "500": _message("`failed to update certificate: …`."),
            },
        ),
    },
    "/openapi.json": {
        "get": _operation(
            "This document",
            "The Admin API as OpenAPI 3.0.",
            {"200": _json("The document.", {"type": "object"})},
        )
    },
    "/metrics": {
        "get": _operation(
            "Prometheus metrics",
            "Metrics in the Prometheus text exposition format.",
            {"200": {"description": "The metrics.", "content": {"text/plain": {"schema": {"type": "string"}}}}},
        )
    },
    "/": {
        "get": _operation(
            "Status page",
            "A human-readable HTML page: managed certificates, their renewal and the issuance state.",
            {"200": {"description": "The page.", "content": {"text/html": {"schema": {"type": "string"}}}}},
        )
    },
}

_DOCUMENT: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {
        "title": "kongacme Admin API",
        "version": __version__,
        "description": "Kong Gateway's ACME plugin Admin API (`/acme`, `/acme/certificates`) and kongacme's "
        "additions. Bodies: JSON objects or forms, at most 64 KiB. Keep the listener on loopback or set "
        "`admin.token`.",
    },
    "paths": _PATHS,
    "components": {
        "schemas": _SCHEMAS,
        "responses": {
            "Unauthorized": _message(
                "`admin.token` is set and the request did not carry it (answered from the request head, "
                "before any body is read; the connection is closed)."
            ),
            "Timeout": _message("The whole request was not received within `admin.request_timeout` seconds."),
            "TooLarge": _message(
                "The request body is over 64 KiB (a larger Content-Length is refused before the body is read)."
            ),
            "HeadTooLarge": _message("The request line and headers are over `admin.max_header_bytes`."),
            "UnsupportedMediaType": _message(
                "A body that is not application/json, application/x-www-form-urlencoded or (POST only) "
                "multipart/form-data."
            ),
        },
        "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "`Authorization: Bearer <admin.token>`, required when admin.token is set."},
        },
    },
    # Either the token, or nothing when admin.token is null.
    "security": [{"bearer": []}, {}],
}


def document() -> dict[str, Any]:
    """The OpenAPI document (a fresh copy, safe to modify)."""
    return copy.deepcopy(_DOCUMENT)


def install(admin_site: Any) -> None:
    """Add ``GET /openapi.json`` to the Admin API site."""
    body = document()

    def openapi(request: Request) -> tuple[int, Any]:
        return 200, body

    admin_site.resource.add_route(b"GET", b"/openapi.json", openapi)
