"""
A small in-memory ACME CA (the RFC 8555 subset kongacme uses) as a
``twisted.web`` resource, for :class:`treq.testing.StubTreq`.

It checks what a real CA checks — JWS signatures, one-use nonces, the
``url`` header, ``kid`` vs ``jwk``, EAB MACs, that the key authorization is
in the token store when it "validates" — so the client cannot pass by being
sloppy. Knobs produce what Pebble cannot: slow validation with
``Retry-After``, rejected nonces, arbitrary answers through :attr:`hooks`,
and ZeroSSL's EAB credentials endpoint.
"""

from __future__ import annotations

import datetime
import itertools
import json
import secrets
from typing import Any, Callable, Optional

import josepy as jose
from acme import jws
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from twisted.web.resource import Resource
from twisted.web.server import Request

from kongacme.testing import TestCA

PROBLEM = "urn:ietf:params:acme:error:"
#: Where the fake answers like ZeroSSL's EAB API: a path of its own, and the
#: real endpoint's path (StubTreq sends every host to the same resource).
ZEROSSL_PATHS = ("/zerossl-eab", "/acme/eab-credentials-email")
#: A hook gets ``(request, path, payload)`` (payload ``None`` for unsigned
#: requests) and returns ``None`` to carry on, or the response body (bytes
#: or ``NOT_DONE_YET``) after setting code and headers itself.
Hook = Callable[[Request, str, Optional[dict]], Any]


class _Problem(Exception):
    def __init__(self, code: int, kind: str, detail: str):
        self.code, self.kind, self.detail = code, kind, detail


def cross_signed(subject: TestCA, issuer: TestCA) -> x509.Certificate:
    """``subject``'s CA certificate (same name and key) issued by ``issuer``."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(subject.certificate.subject)
        .issuer_name(issuer.certificate.subject)
        .public_key(subject.key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(issuer.key, hashes.SHA256())
    )


def _pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


class FakeCA(Resource):
    """
    The CA. Serve it with ``StubTreq(ca)``; the directory is
    ``ca.directory_url``.

    :ivar token_store: read when a challenge is validated (``None``: every
        challenge passes).
    :ivar reject_nonces: how many of the next good nonces to refuse with
        ``badNonce``.
    :ivar authz_polls: authorization reads that still say ``pending`` after
        the challenge was answered.
    :ivar order_polls: order reads that still say ``processing`` after
        finalize.
    :ivar retry_after: ``Retry-After`` value on pending/processing answers.
    :ivar reuse_authz: new orders come with valid authorizations.
    :ivar hooks: see :data:`Hook`.
    :ivar log: ``(method, path)`` of every request.
    """

    isLeaf = True

    def __init__(
        self,
        base: str = "https://ca.test",
        *,
        directory_path: str = "/dir",
        token_store: Any = None,
        terms_of_service: Optional[str] = "https://ca.test/terms",
        eab_keys: Optional[dict[str, str]] = None,
        external_account_required: bool = False,
        renewal_info: bool = False,
    ):
        super().__init__()
        self.base = base
        self.directory_path = directory_path
        self.token_store = token_store
        self.terms_of_service = terms_of_service
        self.eab_keys = dict(eab_keys or {})
        self.external_account_required = external_account_required or bool(eab_keys)
        self.renewal_info = renewal_info
        self.reject_nonces = 0
        self.authz_polls = 0
        self.order_polls = 0
        self.retry_after: Optional[str] = None
        self.reuse_authz = False
        self.hooks: list[Hook] = []
        self.log: list[tuple[str, str]] = []
        self.nonces: set[str] = set()
        self.accounts: dict[str, jose.JWK] = {}
        self.orders: dict[str, dict] = {}
        self.authzs: dict[str, dict] = {}
        self.root = TestCA.create("Fake Root X")
        self.other_root = TestCA.create("Fake Root Y")
        self._ids = itertools.count(1)

    @property
    def directory_url(self) -> str:
        return self.base + self.directory_path

    def url(self, path: str) -> str:
        return self.base + path

    # -- plumbing ---------------------------------------------------------

    def render(self, request: Request) -> Any:
        path = request.path.decode()
        method = request.method.decode()
        self.log.append((method, path))
        body = request.content.read()
        try:
            if method in ("HEAD", "GET") or path in ZEROSSL_PATHS:
                for hook in self.hooks:
                    answer = hook(request, path, None)
                    if answer is not None:
                        return answer
                return self._unsigned(request, method, path, body)
            key, protected, payload = self._verify(request, path, body)
            for hook in self.hooks:
                answer = hook(request, path, payload)
                if answer is not None:
                    return answer
            return self._signed(request, path, key, protected, payload)
        except _Problem as p:
            return self.problem(request, p.code, p.kind, p.detail)

    def fresh_nonce(self, request: Request) -> None:
        nonce = jose.b64encode(secrets.token_bytes(16)).decode()
        self.nonces.add(nonce)
        request.setHeader(b"Replay-Nonce", nonce.encode())

    def answer(
        self, request: Request, code: int, jobj: Any, location: Optional[str] = None, nonce: bool = True
    ) -> bytes:
        request.setResponseCode(code)
        if nonce:
            self.fresh_nonce(request)
        request.setHeader(b"Content-Type", b"application/json")
        if location:
            request.setHeader(b"Location", location.encode())
        return json.dumps(jobj).encode()

    def problem(self, request: Request, code: int, kind: str, detail: str, **extra: Any) -> bytes:
        request.setResponseCode(code)
        self.fresh_nonce(request)
        request.setHeader(b"Content-Type", b"application/problem+json")
        return json.dumps({"type": PROBLEM + kind, "detail": detail, "status": code, **extra}).encode()

    def _verify(self, request: Request, path: str, body: bytes) -> tuple[jose.JWK, Any, Optional[dict]]:
        if request.getHeader(b"Content-Type") != b"application/jose+json":
            raise _Problem(415, "malformed", "Content-Type must be application/jose+json")
        try:
            signed = jws.JWS.json_loads(body)
        except Exception as e:
            raise _Problem(400, "malformed", "not a JWS: %s" % (e,))
        protected = signed.signature.combined
        if protected.url != self.url(path):
            raise _Problem(401, "unauthorized", "url %r is not %r" % (protected.url, self.url(path)))
        nonce = jose.b64encode(protected.nonce).decode() if protected.nonce else ""
        if nonce not in self.nonces:
            raise _Problem(400, "badNonce", "unknown nonce %r" % (nonce,))
        self.nonces.discard(nonce)
        if self.reject_nonces:
            self.reject_nonces -= 1
            raise _Problem(400, "badNonce", "nonce rejected for fun")
        if path == "/new-account":
            if protected.kid or not protected.jwk:
                raise _Problem(400, "malformed", "newAccount must be signed with jwk")
            key = protected.jwk
        else:
            if protected.jwk or protected.kid not in self.accounts:
                raise _Problem(400, "accountDoesNotExist" if protected.kid else "malformed", "sign with a known kid")
            key = self.accounts[protected.kid]
        if not signed.verify(key):
            raise _Problem(400, "malformed", "bad signature")
        payload = None if signed.payload == b"" else json.loads(signed.payload)
        return key, protected, payload

    # -- unsigned ---------------------------------------------------------

    def _unsigned(self, request: Request, method: str, path: str, body: bytes) -> bytes:
        if path == self.directory_path and method == "GET":
            directory: dict[str, Any] = {
                "newNonce": self.url("/new-nonce"),
                "newAccount": self.url("/new-account"),
                "newOrder": self.url("/new-order"),
                "meta": {"externalAccountRequired": self.external_account_required},
            }
            if self.terms_of_service:
                directory["meta"]["termsOfService"] = self.terms_of_service
            if self.renewal_info:
                directory["renewalInfo"] = self.url("/renewal-info")
            return self.answer(request, 200, directory, nonce=False)
        if path == "/new-nonce":
            request.setResponseCode(200 if method == "HEAD" else 204)
            self.fresh_nonce(request)
            return b""
        if path in ZEROSSL_PATHS and method == "POST":
            email = request.args.get(b"email", [b""])[0].decode()
            if "@" not in email:
                return self.answer(
                    request, 200, {"success": False, "error": {"code": 2900, "type": "invalid_email"}}, nonce=False
                )
            kid = "zerossl-" + secrets.token_hex(4)
            self.eab_keys[kid] = jose.b64encode(secrets.token_bytes(32)).decode()
            return self.answer(
                request, 200, {"success": True, "eab_kid": kid, "eab_hmac_key": self.eab_keys[kid]}, nonce=False
            )
        raise _Problem(404, "malformed", "no such resource %s %s" % (method, path))

    # -- signed -----------------------------------------------------------

    def _signed(self, request: Request, path: str, key: jose.JWK, protected: Any, payload: Optional[dict]) -> bytes:
        if path == "/new-account":
            return self._new_account(request, key, payload or {})
        kind, _, ident = path.strip("/").partition("/")
        if path == "/new-order":
            return self._new_order(request, protected.kid, payload or {})
        if kind == "authz" and ident in self.authzs:
            return self._authz(request, self.authzs[ident])
        if kind == "chall" and ident in self.authzs:
            return self._challenge(request, self.authzs[ident], payload)
        if kind in ("order", "finalize", "cert", "alt") and ident in self.orders:
            order = self.orders[ident]
            if order["account"] != protected.kid:
                raise _Problem(403, "unauthorized", "not your order")
            return getattr(self, "_" + kind)(request, order, payload)
        raise _Problem(404, "malformed", "no such resource %s" % (path,))

    def _account_url(self, key: jose.JWK) -> Optional[str]:
        for url, known in self.accounts.items():
            if known.public_key() == key.public_key():
                return url
        return None

    def _new_account(self, request: Request, key: jose.JWK, payload: dict) -> bytes:
        existing = self._account_url(key)
        if existing:
            return self.answer(request, 200, {"status": "valid"}, location=existing)
        if payload.get("onlyReturnExisting"):
            raise _Problem(400, "accountDoesNotExist", "no account for this key")
        if self.terms_of_service and payload.get("termsOfServiceAgreed") is not True:
            raise _Problem(403, "userActionRequired", "must agree to the terms of service")
        if self.external_account_required:
            self._check_eab(key, payload.get("externalAccountBinding"))
        url = self.url("/account/%d" % (next(self._ids),))
        self.accounts[url] = key.public_key()
        return self.answer(request, 201, {"status": "valid", "contact": payload.get("contact", [])}, location=url)

    def _check_eab(self, key: jose.JWK, binding: Any) -> None:
        if not isinstance(binding, dict):
            raise _Problem(403, "externalAccountRequired", "an external account binding is required")
        eab = jws.JWS.from_json(binding)
        header = eab.signature.combined
        hmac_key = self.eab_keys.get(header.kid)
        if hmac_key is None or header.alg != jose.HS256 or header.url != self.url("/new-account"):
            raise _Problem(401, "unauthorized", "unknown EAB kid or bad header")
        if not eab.verify(jose.JWKOct(key=jose.b64decode(hmac_key))):
            raise _Problem(401, "unauthorized", "EAB MAC does not verify")
        if jose.JWK.from_json(json.loads(eab.payload)) != key.public_key():
            raise _Problem(401, "unauthorized", "EAB binds another key")

    def _new_order(self, request: Request, account: str, payload: dict) -> bytes:
        identifiers = payload.get("identifiers") or []
        if len(identifiers) != 1 or identifiers[0].get("type") != "dns":
            raise _Problem(400, "rejectedIdentifier", "one dns identifier please")
        ident = str(next(self._ids))
        authz = {
            "id": ident,
            "account": account,
            "identifier": identifiers[0],
            "status": "valid" if self.reuse_authz else "pending",
            "token": jose.b64encode(secrets.token_bytes(32)).decode(),
            "challenge_status": "valid" if self.reuse_authz else "pending",
            "polls": 0,
            "error": None,
        }
        self.authzs[ident] = authz
        self.orders[ident] = {
            "id": ident,
            "account": account,
            "identifiers": identifiers,
            "authz": authz,
            "finalized": False,
            "polls": 0,
            "chain": None,
        }
        return self.answer(request, 201, self._order_json(self.orders[ident]), location=self.url("/order/" + ident))

    def _authz_json(self, authz: dict) -> dict:
        challenge: dict[str, Any] = {
            "type": "http-01",
            "url": self.url("/chall/" + authz["id"]),
            "token": authz["token"],
            "status": authz["challenge_status"],
        }
        if authz["error"]:
            challenge["error"] = authz["error"]
        dns01 = {
            "type": "dns-01",
            "url": self.url("/chall-dns/" + authz["id"]),
            "token": authz["token"],
            "status": "pending",
        }
        return {"identifier": authz["identifier"], "status": authz["status"], "challenges": [dns01, challenge]}

    def _validate(self, authz: dict) -> None:
        account_key = self.accounts[authz["account"]]
        expected = authz["token"] + "." + jose.b64encode(account_key.thumbprint()).decode()
        got = expected
        if self.token_store is not None:
            d = self.token_store.get(authz["token"])
            results: list = []
            d.addBoth(results.append)
            got = results[0] if results else None
        ok = got == expected
        authz["status"] = authz["challenge_status"] = "valid" if ok else "invalid"
        if not ok:
            authz["error"] = {
                "type": PROBLEM + "unauthorized",
                "detail": "key authorization %r is wrong" % (got,),
                "status": 403,
            }

    def _authz(self, request: Request, authz: dict) -> bytes:
        if authz["challenge_status"] == "processing":
            if authz["polls"] >= self.authz_polls:
                self._validate(authz)
            authz["polls"] += 1
        if authz["status"] == "pending" and self.retry_after:
            request.setHeader(b"Retry-After", self.retry_after.encode())
        return self.answer(request, 200, self._authz_json(authz))

    def _challenge(self, request: Request, authz: dict, payload: Optional[dict]) -> bytes:
        if payload != {}:
            raise _Problem(400, "malformed", "answer a challenge with {}")
        if authz["challenge_status"] == "pending":
            authz["challenge_status"] = "processing"
            if self.authz_polls == 0:
                self._validate(authz)
        request.setHeader(b"Link", ('<%s>;rel="up"' % (self.url("/authz/" + authz["id"]),)).encode())
        return self.answer(request, 200, self._authz_json(authz)["challenges"][1])

    def _order_json(self, order: dict) -> dict:
        authz = order["authz"]
        if authz["status"] == "invalid":
            status = "invalid"
        elif authz["status"] != "valid":
            status = "pending"
        elif not order["finalized"]:
            status = "ready"
        elif order["chain"] is None:
            status = "processing"
        else:
            status = "valid"
        jobj: dict[str, Any] = {
            "status": status,
            "identifiers": order["identifiers"],
            "authorizations": [self.url("/authz/" + authz["id"])],
            "finalize": self.url("/finalize/" + order["id"]),
        }
        if status == "valid":
            jobj["certificate"] = self.url("/cert/" + order["id"])
        return jobj

    def _order(self, request: Request, order: dict, payload: Optional[dict]) -> bytes:
        if order["finalized"] and order["chain"] is None:
            order["polls"] += 1
            if order["polls"] > self.order_polls:
                self._sign(order)
            elif self.retry_after:
                request.setHeader(b"Retry-After", self.retry_after.encode())
        return self.answer(request, 200, self._order_json(order))

    def _finalize(self, request: Request, order: dict, payload: Optional[dict]) -> bytes:
        if self._order_json(order)["status"] != "ready":
            raise _Problem(403, "orderNotReady", "order is not ready")
        csr = x509.load_der_x509_csr(jose.b64decode((payload or {})["csr"]))
        names = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName
        )
        if names != [order["identifiers"][0]["value"]] or not csr.is_signature_valid:
            raise _Problem(400, "badCSR", "CSR names %r" % (names,))
        order["csr"] = csr
        order["finalized"] = True
        if self.order_polls == 0:
            self._sign(order)
        return self.answer(request, 200, self._order_json(order), location=self.url("/order/" + order["id"]))

    def _sign(self, order: dict) -> None:
        csr = order["csr"]
        host = order["identifiers"][0]["value"]
        now = datetime.datetime.now(datetime.timezone.utc)
        leaf = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
            .issuer_name(self.root.certificate.subject)
            .public_key(csr.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=1))
            .not_valid_after(now + datetime.timedelta(days=90))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(host)]), critical=False)
            .sign(self.root.key, hashes.SHA256())
        )
        order["chain"] = _pem(leaf, self.root.certificate)
        order["alternate"] = _pem(leaf, cross_signed(self.root, self.other_root))

    def _cert(self, request: Request, order: dict, payload: Optional[dict]) -> bytes:
        if payload is not None or request.getHeader(b"Accept") != b"application/pem-certificate-chain":
            raise _Problem(400, "malformed", "POST-as-GET with Accept: application/pem-certificate-chain")
        request.setHeader(b"Link", ('<%s>;rel="alternate"' % ("/alt/" + order["id"],)).encode())
        return self._chain(request, order["chain"])

    def _alt(self, request: Request, order: dict, payload: Optional[dict]) -> bytes:
        return self._chain(request, order["alternate"])

    def _chain(self, request: Request, chain: bytes) -> bytes:
        request.setResponseCode(200)
        self.fresh_nonce(request)
        request.setHeader(b"Content-Type", b"application/pem-certificate-chain")
        return chain
