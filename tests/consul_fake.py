"""
A fake of Consul's KV HTTP API (``/v1/kv/``) as a ``twisted.web`` resource,
for testing code that talks to Consul without a Consul server (none can be
installed on the machines this project is tested on).

Use it through :class:`treq.testing.StubTreq` (``StubTreq(FakeConsul())``)
or served on a real port with :func:`start_fake_consul`. It implements what
Consul's documentation and ``agent/kvs_endpoint.go`` say about:

- ``GET /v1/kv/<key>``: a JSON array with one entry (``LockIndex``, ``Key``,
  ``Flags``, ``Value`` in base64 or ``null`` when empty, ``CreateIndex``,
  ``ModifyIndex``; ``Session`` omitted, as Consul does when no session holds
  the key); ``?raw`` for the bare value; ``?recurse`` for every entry under a
  prefix; ``?keys`` (with ``separator``, or the historic ``seperator``) for
  key names only. A missing key, or an empty ``recurse``/``keys`` answer for
  a non-empty prefix, is a 404 with an empty body. Every read carries
  ``X-Consul-Index``.
- ``PUT /v1/kv/<key>``: the body is the value; ``?flags=`` (an unsigned
  64-bit integer, 0 when absent); ``?cas=0`` writes only if the key does not
  exist, ``?cas=<index>`` only if its ``ModifyIndex`` is that; answers
  ``true``/``false``. Bodies over 512 KiB get a 413.
- ``DELETE /v1/kv/<key>``: ``?recurse`` for a whole prefix, ``?cas=<index>``
  (like Consul, a CAS delete of a key that does not exist answers ``true``);
  ``cas`` and ``recurse`` together are refused.
- ACLs when ``tokens`` is given: the token from ``X-Consul-Token``,
  ``?token=`` or ``Authorization: Bearer``; an unknown token gets 403 "ACL
  not found", one lacking a permission 403 "Permission denied: ...". Lists
  leave out what the token may not read and say so with
  ``X-Consul-Results-Filtered-By-ACLs: true``, as Consul does.
- Key checks of current Consul (1.21.6+, CVE-2025-11392): no leading ``/``,
  no ``../`` traversal (also percent-encoded), no leading or trailing
  space; 400 otherwise. ``validate_keys=False`` is the agent's
  ``disable_kv_key_validation``.

Not implemented: sessions (``?acquire``/``?release`` are refused with 400),
blocking queries (``?index``/``?wait`` are ignored), transactions,
datacenters and namespaces.

Outages: ``fake.down = True`` answers everything with 500 "No cluster
leader" (what Consul answers without a leader); ``fake.hold = True`` keeps
requests unanswered until :meth:`FakeConsul.release` (for timeouts); and a
served fake can be stopped (``stopListening``) for "connection refused".
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any, Mapping, Optional
from urllib.parse import parse_qsl, unquote_to_bytes

import attrs
from twisted.internet.interfaces import IListeningPort
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

#: Consul's default ``kv_max_value_size``: 512 KiB.
MAX_VALUE_SIZE = 512 * 1024
#: The AccessorID of Consul's built-in anonymous token.
ANONYMOUS_ACCESSOR = "00000000-0000-0000-0000-000000000002"
KV_PREFIX = b"/v1/kv/"
_MAX_UINT64 = 2**64 - 1
_TRAVERSALS = ("../", "..\\", "%2e%2e%2f", "%2e%2e/", "..%2f", "%2e%2e%5c", "%252e%252e%252f")


@attrs.define
class KVEntry:
    """
    One key as Consul keeps it.

    :ivar modify_index: what ``?cas=`` compares with.
    """

    key: str
    value: bytes
    flags: int
    create_index: int
    modify_index: int
    lock_index: int = 0

    def to_json(self) -> dict[str, Any]:
        """The entry as Consul's API shows it (``Value`` base64, or ``None`` when empty)."""
        return {
            "LockIndex": self.lock_index,
            "Key": self.key,
            "Flags": self.flags,
            "Value": base64.b64encode(self.value).decode("ascii") if self.value else None,
            "CreateIndex": self.create_index,
            "ModifyIndex": self.modify_index,
        }


@attrs.frozen
class RecordedRequest:
    """
    A request the fake received, for tests to look at.

    :ivar key: the key (or prefix) after ``/v1/kv/``, percent-decoded (the
        whole path for other paths).
    :ivar args: query parameters, first value of each, decoded.
    :ivar token: the ACL token sent, or ``None``.
    :ivar body: the request body.
    """

    method: str
    key: str
    args: dict[str, str]
    token: Optional[str]
    body: bytes


class _Answer(Exception):
    """An early answer: ``status`` with a text ``message`` (empty for none)."""

    def __init__(self, status: int, message: str = ""):
        self.status = status
        self.message = message


def _uint(args: dict[str, str], name: str) -> Optional[int]:
    # Go's strconv.ParseUint; Consul returns its error unwrapped, i.e. 500.
    if name not in args:
        return None
    text = args[name]
    if not text.isascii() or not text.isdigit() or int(text) > _MAX_UINT64:
        raise _Answer(500, f'strconv.ParseUint: parsing "{text}": invalid syntax')
    return int(text)


def _accessor(secret: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "fake-consul-token:" + secret))


class FakeConsul(Resource):
    """
    Consul's KV store and HTTP API, in memory.

    :ivar entries: the store, by full key (``acme/kong_acme:...``).
    :ivar index: the last index handed out; every change takes the next.
    :ivar requests: every request received, oldest first.
    :ivar down: answer every request with 500 "No cluster leader".
    :ivar hold: keep new requests unanswered until :meth:`release`.
    """

    isLeaf = True

    def __init__(
        self,
        tokens: Optional[Mapping[str, str]] = None,
        *,
        anonymous: Optional[str] = None,
        max_value_size: int = MAX_VALUE_SIZE,
        validate_keys: bool = True,
    ):
        """
        :param tokens: ``None`` for no ACLs, or secret → ``"read"`` or
            ``"write"`` (write includes read) on every key.
        :param anonymous: what requests without a token may do when ACLs
            are on: ``None`` (nothing, Consul's ``default_policy = deny``),
            ``"read"`` or ``"write"``.
        :param max_value_size: Consul's ``kv_max_value_size``.
        :param validate_keys: ``False`` is ``disable_kv_key_validation``.
        """
        super().__init__()
        for policy in list((tokens or {}).values()) + [anonymous]:
            if policy not in (None, "read", "write"):
                raise ValueError(f"a token policy is None, 'read' or 'write', not {policy!r}")
        self._tokens = dict(tokens) if tokens is not None else None
        self._anonymous = anonymous
        self._max_value_size = max_value_size
        self._validate_keys = validate_keys
        self.entries: dict[str, KVEntry] = {}
        self.index = 1
        self.requests: list[RecordedRequest] = []
        self.down = False
        self.hold = False
        self._held: list[tuple[Request, RecordedRequest]] = []

    # -- direct access, for tests ------------------------------------------

    def put(self, key: str, value: bytes, flags: int = 0) -> KVEntry:
        """
        Store ``value`` under the full ``key`` as a ``PUT`` would (another
        Consul client writing), bypassing HTTP and ACLs.
        """
        self.index += 1
        old = self.entries.get(key)
        entry = KVEntry(key, value, flags, old.create_index if old else self.index, self.index)
        self.entries[key] = entry
        return entry

    def release(self) -> None:
        """Stop holding requests, and answer the held ones still connected."""
        self.hold = False
        held, self._held = self._held, []
        for request, seen in held:
            request.write(self._respond(request, seen))
            request.finish()

    # -- HTTP --------------------------------------------------------------

    def render(self, request: Request) -> Any:
        seen = self._record(request)
        if self.down:
            return self._text(request, 500, "No cluster leader")
        if self.hold:
            # A client that gives up (times out) is forgotten.
            held = (request, seen)
            self._held.append(held)
            request.notifyFinish().addErrback(lambda _: held in self._held and self._held.remove(held))
            return NOT_DONE_YET
        return self._respond(request, seen)

    def _record(self, request: Request) -> RecordedRequest:
        raw_path = request.path
        path = raw_path[len(KV_PREFIX):] if raw_path.startswith(KV_PREFIX) else raw_path
        key = unquote_to_bytes(path).decode("utf-8", "surrogateescape")
        # Not request.args: twisted.web drops "?recurse" (no "="), Go keeps it.
        args: dict[str, str] = {}
        for name, value in parse_qsl(request.uri.partition(b"?")[2], keep_blank_values=True):
            args.setdefault(name.decode("utf-8", "replace"), value.decode("utf-8", "replace"))
        body = request.content.read() if request.content is not None else b""
        method = request.method.decode("ascii", "replace")
        seen = RecordedRequest(method, key, args, self._token(request, args), body)
        self.requests.append(seen)
        return seen

    def _respond(self, request: Request, seen: RecordedRequest) -> bytes:
        try:
            if not request.path.startswith(KV_PREFIX):
                raise _Answer(404, "404 page not found\n")
            return self._dispatch(request, seen)
        except _Answer as answer:
            return self._text(request, answer.status, answer.message)

    def _text(self, request: Request, status: int, message: str) -> bytes:
        request.setResponseCode(status)
        if message:
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return message.encode("utf-8")

    def _json(self, request: Request, value: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")

    def _meta(self, request: Request) -> None:
        request.setHeader(b"x-consul-index", b"%d" % (self.index,))
        request.setHeader(b"x-consul-knownleader", b"true")
        request.setHeader(b"x-consul-lastcontact", b"0")

    def _dispatch(self, request: Request, seen: RecordedRequest) -> bytes:
        method, key, args, token = seen.method, seen.key, seen.args, seen.token
        if any(t in key for t in _TRAVERSALS):
            raise _Answer(400, "URL path contains invalid traversal sequence")
        if key and self._validate_keys:
            if key.startswith("/"):
                raise _Answer(400, "key must not begin with a '/'")
            if key != key.strip(" "):
                raise _Answer(400, "key must not have leading or trailing spaces")

        if method == "GET":
            return self._get(request, key, args, token)
        if method == "PUT":
            return self._put(request, key, args, token, seen.body)
        if method == "DELETE":
            return self._delete(request, key, args, token)
        request.setHeader(b"allow", b"GET, PUT, DELETE")
        raise _Answer(405, f"method {method} not allowed")

    # -- ACLs --------------------------------------------------------------

    def _token(self, request: Request, args: dict[str, str]) -> Optional[str]:
        if args.get("token"):
            return args["token"]
        header = request.getHeader(b"x-consul-token")
        if header:
            return header.decode("utf-8", "replace")
        authorization = request.getHeader(b"authorization") or b""
        if authorization.lower().startswith(b"bearer "):
            return authorization[7:].decode("utf-8", "replace").strip() or None
        return None

    def _policy(self, token: Optional[str]) -> tuple[Optional[str], str]:
        """The token's policy and AccessorID; 403 "ACL not found" for an unknown token."""
        if self._tokens is None:
            return "write", ANONYMOUS_ACCESSOR
        if not token:
            return self._anonymous, ANONYMOUS_ACCESSOR
        if token not in self._tokens:
            raise _Answer(403, "ACL not found")
        return self._tokens[token], _accessor(token)

    def _may(self, token: Optional[str], access: str) -> bool:
        policy, _ = self._policy(token)
        return policy == "write" or (policy == "read" and access == "read")

    def _require(self, token: Optional[str], access: str, key: str) -> None:
        _, accessor = self._policy(token)
        if not self._may(token, access):
            raise _Answer(
                403,
                f"Permission denied: token with AccessorID '{accessor}' lacks permission "
                f"'key:{access}' on {json.dumps(key)}",
            )

    # -- the operations ----------------------------------------------------

    def _get(self, request: Request, key: str, args: dict[str, str], token: Optional[str]) -> bytes:
        if "keys" in args:
            return self._list_keys(request, key, args, token)
        if "recurse" in args:
            readable = self._may(token, "read")
            found = [e for k, e in sorted(self.entries.items()) if k.startswith(key)]
            self._meta(request)
            if found and not readable:
                request.setHeader(b"x-consul-results-filtered-by-acls", b"true")
                found = []
            if not found:
                raise _Answer(404)
            return self._json(request, [e.to_json() for e in found])
        if not key:
            raise _Answer(400, "Missing key name")
        self._require(token, "read", key)
        self._meta(request)
        entry = self.entries.get(key)
        if entry is None:
            raise _Answer(404)
        if "raw" in args:
            request.setHeader(b"content-type", b"text/plain")
            request.setHeader(b"x-content-type-options", b"nosniff")
            request.setHeader(b"content-security-policy", b"sandbox")
            return entry.value
        return self._json(request, [entry.to_json()])

    def _list_keys(self, request: Request, prefix: str, args: dict[str, str], token: Optional[str]) -> bytes:
        separator = args.get("separator", args.get("seperator", ""))
        readable = self._may(token, "read")
        keys: list[str] = []
        for name in sorted(k for k in self.entries if k.startswith(prefix)):
            if separator:
                cut = name.find(separator, len(prefix))
                if cut >= 0:
                    name = name[: cut + len(separator)]
            if not keys or keys[-1] != name:
                keys.append(name)
        self._meta(request)
        if keys and not readable:
            request.setHeader(b"x-consul-results-filtered-by-acls", b"true")
            keys = []
        if not keys and prefix:
            raise _Answer(404)
        return self._json(request, keys)

    def _put(self, request: Request, key: str, args: dict[str, str], token: Optional[str], body: bytes) -> bytes:
        if not key:
            raise _Answer(400, "Missing key name")
        if sum(name in args for name in ("cas", "acquire", "release")) > 1:
            raise _Answer(400, f"Conflicting flags: {request.uri.partition(b'?')[2].decode('latin-1')}\n")
        flags = _uint(args, "flags") or 0
        cas = _uint(args, "cas")
        if "acquire" in args or "release" in args:
            raise _Answer(400, "FakeConsul does not implement sessions (acquire/release)")
        if len(body) > self._max_value_size:
            raise _Answer(
                413,
                f"Request body({len(body)} bytes) too large, max size: {self._max_value_size} bytes. "
                "See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
            )
        self._require(token, "write", key)
        existing = self.entries.get(key)
        if cas is not None:
            if cas == 0 and existing is not None:
                return self._json(request, False)
            if cas != 0 and (existing is None or existing.modify_index != cas):
                return self._json(request, False)
        self.put(key, body, flags)
        return self._json(request, True)

    def _delete(self, request: Request, key: str, args: dict[str, str], token: Optional[str]) -> bytes:
        if "recurse" in args and "cas" in args:
            raise _Answer(400, f"Conflicting flags: {request.uri.partition(b'?')[2].decode('latin-1')}\n")
        if "recurse" in args:
            self._require(token, "write", key)
            doomed = [k for k in self.entries if k.startswith(key)]
            if doomed:
                self.index += 1
                for name in doomed:
                    del self.entries[name]
            return self._json(request, True)
        if not key:
            raise _Answer(400, "Missing key name")
        cas = _uint(args, "cas")
        self._require(token, "write", key)
        existing = self.entries.get(key)
        if existing is None:
            # Consul: a CAS delete of a missing key answers true.
            return self._json(request, True)
        if cas is not None and existing.modify_index != cas:
            return self._json(request, False)
        self.index += 1
        del self.entries[key]
        return self._json(request, True)


def start_fake_consul(
    reactor: Any, port: int = 0, fake: Optional[FakeConsul] = None, interface: str = "127.0.0.1"
) -> IListeningPort:
    """
    Serve ``fake`` (a new :class:`FakeConsul` if ``None``) over real HTTP.

    :param reactor: provides ``IReactorTCP``.
    :param port: the TCP port, 0 for any free one (``getHost().port``).
    :return: the listening port; the fake is ``port.factory.resource``.
        Stop it with ``stopListening()`` (clients then get "connection
        refused"), and serve the same fake again by passing it back in.
    """
    site = Site(fake if fake is not None else FakeConsul())
    site.displayTracebacks = False
    return reactor.listenTCP(port, site, interface=interface)


__all__ = ["FakeConsul", "KVEntry", "MAX_VALUE_SIZE", "RecordedRequest", "start_fake_consul"]
