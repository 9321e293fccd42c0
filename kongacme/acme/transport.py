"""
ACME's HTTP layer: JWS-signed POSTs and POST-as-GET (RFC 8555 §6.2, §6.3)
over an injected treq ``HTTPClient``, replay nonces (§6.5), problem
documents (§6.7) and a deadline on every request.

Errors come out in two kinds (see :mod:`kongacme.acme.response`):

- :class:`~kongacme.errors.AcmeProblem` for every non-2xx answer: the CA's
  problem document (type, detail, status, ``Retry-After``, subproblems), or
  ``about:blank`` with the status when the body is not a problem document
  (RFC 7807 §4.2: the status code is then all there is to say).
- :class:`~kongacme.errors.AcmeTransportError` when there is no usable
  answer: refused, timed out, closed mid-response, a 2xx body that is not the
  JSON expected.
"""

from __future__ import annotations

import collections
import json
from typing import Any, Optional

import attrs
import josepy as jose
from acme import jws
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.logger import Logger
from twisted.python.failure import Failure

from kongacme.acme.response import ERROR_PREFIX, AcmeResponse, problem_from_response
from kongacme.errors import AcmeError, AcmeProblem, AcmeTimeout, AcmeTransportError, ResponseTooLarge
from kongacme.failures import describe_failure
from kongacme.response_body import read_body

_log = Logger()

JOSE_CONTENT_TYPE = "application/jose+json"
PROBLEM_CONTENT_TYPE = "application/problem+json"
PEM_CHAIN_CONTENT_TYPE = "application/pem-certificate-chain"
BAD_NONCE = ERROR_PREFIX + "badNonce"

#: Seconds for one request, from sending it to the last byte of the answer.
DEFAULT_TIMEOUT = 30.0
#: How often a POST rejected with ``badNonce`` is sent again with a fresh
#: nonce. A CA may reject good nonces at random (Pebble: 5% by default, and
#: tests go up to 50%); at 50% the chance of 17 rejections in a row is 1 in
#: 130,000, while the cost of a retry is one round trip.
DEFAULT_BAD_NONCE_RETRIES = 16
#: The largest answer we read (a certificate chain is a few kB).
MAX_RESPONSE_BYTES = 1024 * 1024
#: Nonces kept for later requests; more are dropped (they are single-use
#: and may expire, so hoarding them has no value).
MAX_NONCES = 64
USER_AGENT = "kongacme"


def jws_algorithm(key: jose.JWK) -> jose.JWASignature:
    """
    The JWS algorithm for an account key: RS256 for RSA, ES256/384/512 for
    EC P-256/384/521 (RFC 8555 §6.2 requires CAs to support RS256 and ES256).

    :raises ValueError: for another kind of key.
    """
    if isinstance(key, jose.JWKRSA):
        return jose.RS256
    if isinstance(key, jose.JWKEC):
        by_curve = {"secp256r1": jose.ES256, "secp384r1": jose.ES384, "secp521r1": jose.ES512}
        alg = by_curve.get(key.key.curve.name)
        if alg is not None:
            return alg
    raise ValueError("account keys must be RSA or EC P-256/P-384/P-521, not %r" % (key,))


@attrs.define
class AcmeTransport:
    """
    Sends requests to one CA on behalf of one account key.

    :ivar _http: a treq ``HTTPClient`` (or :class:`treq.testing.StubTreq`).
    :ivar _clock: provides ``IReactorTime``; times every request.
    :ivar _key: the account's private key.
    :ivar timeout: seconds allowed per request, answer included.
    :ivar bad_nonce_retries: how often to resend after ``badNonce``.
    :ivar new_nonce_url: the directory's ``newNonce``.
    :ivar kid: the account URL once known; signed requests then carry it
        instead of the public key (§6.2).
    """

    _http: Any = attrs.field(repr=False)
    _clock: IReactorTime = attrs.field(repr=False)
    _key: jose.JWK = attrs.field(repr=False)
    timeout: float = DEFAULT_TIMEOUT
    bad_nonce_retries: int = DEFAULT_BAD_NONCE_RETRIES
    new_nonce_url: Optional[str] = None
    kid: Optional[str] = None
    _alg: jose.JWASignature = attrs.field(init=False)
    _nonces: collections.deque = attrs.field(
        init=False, repr=False, factory=lambda: collections.deque(maxlen=MAX_NONCES)
    )

    def __attrs_post_init__(self) -> None:
        self._alg = jws_algorithm(self._key)
        if not self.timeout > 0:
            raise ValueError(f"timeout must be positive, not {self.timeout!r}")

    @property
    def key(self) -> jose.JWK:
        """The account's private key."""
        return self._key

    @property
    def clock(self) -> IReactorTime:
        """The clock requests are timed with."""
        return self._clock

    def request(
        self,
        method: str,
        url: str,
        *,
        body: Optional[bytes] = None,
        headers: Optional[dict[str, str]] = None,
    ) -> Deferred[AcmeResponse]:
        """
        One unsigned request (the directory, ``newNonce``, or a non-ACME
        API such as ZeroSSL's), with the same timeout and error mapping as
        signed ones.

        :return: ``Deferred`` firing with a 2xx :class:`AcmeResponse`, or
            failing with :class:`~kongacme.errors.AcmeProblem` /
            :class:`~kongacme.errors.AcmeTransportError`.
        """
        return self._send(method, url, body, headers or {})

    def get(self, url: str) -> Deferred[AcmeResponse]:
        """An unsigned GET (only the directory is fetched this way)."""
        return self.request("GET", url)

    def post(
        self,
        url: str,
        payload: Any,
        *,
        accept: Optional[str] = None,
        jwk: bool = False,
    ) -> Deferred[AcmeResponse]:
        """
        A JWS-signed POST (RFC 8555 §6.2), retried with a fresh nonce after
        ``badNonce`` (§6.5) up to :attr:`bad_nonce_retries` times.

        :param payload: ``None`` for POST-as-GET (§6.3: the payload is the
            empty string), ``bytes`` sent as they are, a ``dict`` or a
            ``josepy`` JSON object serialized as JSON.
        :param accept: an ``Accept`` header (e.g. for the certificate).
        :param jwk: sign with the public key in the header instead of the
            account URL — required for ``newAccount`` (§7.3).
        :return: as :meth:`request`.
        """
        return Deferred.fromCoroutine(self._post(url, _encode_payload(payload), accept, jwk))

    def post_as_get(self, url: str, *, accept: Optional[str] = None) -> Deferred[AcmeResponse]:
        """
        Fetch a resource with POST-as-GET (RFC 8555 §6.3): CAs answer
        authenticated GETs only this way.
        """
        return self.post(url, None, accept=accept)

    async def _post(self, url: str, payload: bytes, accept: Optional[str], jwk: bool) -> AcmeResponse:
        if not jwk and self.kid is None:
            raise AcmeError("no ACME account yet: register before posting to %s" % (url,))
        headers = {"Content-Type": JOSE_CONTENT_TYPE}
        if accept is not None:
            headers["Accept"] = accept
        attempt = 0
        while True:
            nonce = await self._take_nonce()
            signed = jws.JWS.sign(
                payload,
                key=self._key,
                alg=self._alg,
                nonce=nonce,
                url=url,
                kid=None if jwk else self.kid,
            )
            try:
                return await self._send("POST", url, signed.json_dumps().encode("utf-8"), headers)
            except AcmeProblem as problem:
                # §6.5: a badNonce answer carries a fresh nonce (already
                # pooled by _send) and the request may simply be sent again.
                if problem.type != BAD_NONCE or attempt >= self.bad_nonce_retries:
                    raise
                attempt += 1
                _log.debug("badNonce from {url}, retry {attempt}", url=url, attempt=attempt)

    async def _take_nonce(self) -> bytes:
        # §7.2: a nonce from any earlier answer will do; otherwise HEAD
        # newNonce for one.
        if self._nonces:
            return self._nonces.popleft()
        if self.new_nonce_url is None:
            raise AcmeError("no newNonce URL: load the directory first")
        await self._send("HEAD", self.new_nonce_url, None, {})
        if not self._nonces:
            raise AcmeTransportError(self.new_nonce_url, "no usable Replay-Nonce header in the answer")
        return self._nonces.popleft()

    def _keep_nonce(self, response: AcmeResponse) -> None:
        value = response.header("Replay-Nonce")
        if not value:
            return
        try:
            self._nonces.append(jose.decode_b64jose(value))
        except jose.DeserializationError:
            # §6.5.1: a nonce must be base64url; a malformed one is useless,
            # and the next request fetches a good one from newNonce.
            _log.debug("ignoring malformed Replay-Nonce {value!r} from {url}", value=value, url=response.url)

    def _send(self, method: str, url: str, body: Optional[bytes], headers: dict[str, str]) -> Deferred[AcmeResponse]:
        d = Deferred.fromCoroutine(self._exchange(method, url, body, headers))

        def timed_out(result: Any, timeout: float) -> Failure:
            # Whatever the cancelled request failed with, the cause is ours.
            return Failure(AcmeTimeout(url, "no complete answer within %g s" % (timeout,)))

        d.addTimeout(self.timeout, self._clock, onTimeoutCancel=timed_out)
        d.addErrback(_transport_error, url)
        return d

    async def _exchange(self, method: str, url: str, body: Optional[bytes], headers: dict[str, str]) -> AcmeResponse:
        all_headers = {"User-Agent": [USER_AGENT]}
        for name, value in headers.items():
            all_headers[name] = [value]
        response = await self._http.request(
            method,
            url,
            headers=all_headers,
            data=body,
            allow_redirects=False,
            unbuffered=True,
        )
        if method == "HEAD" or response.length == 0:
            data = b""
        else:
            try:
                data = await read_body(response, MAX_RESPONSE_BYTES)
            except ResponseTooLarge as e:
                raise AcmeTransportError(url, str(e)) from None
        answer = AcmeResponse(url=url, code=response.code, headers=response.headers, body=data)
        self._keep_nonce(answer)
        if not 200 <= answer.code < 300:
            problem = problem_from_response(answer, self._clock.seconds())
            _log.debug(
                "{method} {url} -> {status} {problem_type}: {detail}",
                method=method,
                url=url,
                status=answer.code,
                problem_type=problem.type,
                detail=problem.detail,
            )
            raise problem
        _log.debug("{method} {url} -> {status}", method=method, url=url, status=answer.code)
        return answer


def _cancelled(failure: Failure) -> bool:
    """Whether a failure is, or only wraps, a cancellation."""
    if failure.check(CancelledError):
        return True
    reasons = getattr(failure.value, "reasons", None)
    return bool(reasons) and all(isinstance(r, Failure) and _cancelled(r) for r in reasons)


def _transport_error(failure: Failure, url: str) -> Failure:
    if failure.check(AcmeError):
        return failure
    if _cancelled(failure):
        # Cancelled by our caller (a timeout was turned into an
        # AcmeTransportError before this): let it through as such.
        raise CancelledError()
    if failure.check(ConnectTimeout):
        raise AcmeTimeout(url, describe_failure(failure))
    raise AcmeTransportError(url, describe_failure(failure))


def _encode_payload(payload: Any) -> bytes:
    if payload is None:
        return b""
    if isinstance(payload, bytes):
        return payload
    if isinstance(payload, dict):
        return json.dumps(payload).encode("utf-8")
    if isinstance(payload, jose.JSONDeSerializable):
        return payload.json_dumps().encode("utf-8")
    raise TypeError("payload must be None, bytes, a dict or a josepy JSON object, not %r" % (type(payload).__name__,))
