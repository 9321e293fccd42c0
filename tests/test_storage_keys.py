"""
Tests for kongacme.storage.keys.
"""

from __future__ import annotations

import json
import re

from twisted.trial.unittest import SynchronousTestCase

from kongacme.errors import CertificateError
from kongacme.storage import keys
from kongacme.storage.errors import StorageValueError, StoredCertificateError
from kongacme.testing import TestCA
from kongacme.tls.certs import CertifiedKey

LE = "https://acme-v02.api.letsencrypt.org/directory"


class KeyNameTests(SynchronousTestCase):
    """
    Tests for the key name builders: Kong's exact spellings.
    """

    def test_account(self) -> None:
        """
        The account key is the API URI verbatim and the email in standard,
        padded base64 (ngx.encode_base64), "+" and "/" included.
        """
        self.assertEqual(
            keys.account_key(LE, "me@example.com"),
            "kong_acme:account:https://acme-v02.api.letsencrypt.org/directory:bWVAZXhhbXBsZS5jb20=",
        )
        self.assertEqual(keys.account_key("http://ca/dir", "a~?@x.io"), "kong_acme:account:http://ca/dir:YX4/QHguaW8=")
        self.assertEqual(keys.account_key("http://ca/dir", "a?~@b.io"), "kong_acme:account:http://ca/dir:YT9+QGIuaW8=")

    def test_per_host(self) -> None:
        """
        Per-host keys are Kong's prefix followed by the host as given.
        """
        self.assertEqual(keys.cert_key("*.example.com"), "kong_acme:cert_key:*.example.com")
        self.assertEqual(keys.renew_config("a.example"), "kong_acme:renew_config:a.example")
        self.assertEqual(keys.fail_backoff("a.example"), "kong_acme:fail_backoff:a.example")
        self.assertEqual(keys.update_lock("a.example"), "kong_acme:update_lock:a.example")
        self.assertEqual(keys.RENEW_LAST_RUN, "kong_acme:renew_last_run")

    def test_http01(self) -> None:
        """
        An http-01 key is the token followed by "#http-01".
        """
        self.assertEqual(keys.http01_token("abc_-1"), "abc_-1#http-01")

    def test_host_of(self) -> None:
        """
        host_of strips a prefix and refuses keys without it.
        """
        self.assertEqual(keys.host_of(keys.renew_config("a.example"), keys.RENEW_CONFIG_PREFIX), "a.example")
        self.assertRaises(ValueError, keys.host_of, "kong_acme:cert_key:a", keys.RENEW_CONFIG_PREFIX)

    def test_kong_constants(self) -> None:
        """
        The lock value and the TTLs are Kong's.
        """
        self.assertEqual(keys.UPDATE_LOCK_VALUE, b"placeholder")
        self.assertEqual(keys.UPDATE_LOCK_TTL, 30)
        self.assertEqual(keys.HTTP01_TTL, 3600)


class CertKeyValueTests(SynchronousTestCase):
    """
    Tests for encode_cert_key and decode_cert_key.
    """

    def setUp(self) -> None:
        self.ca = TestCA.create()
        issued = self.ca.issue(["a.example", "b.example"])
        self.certified = CertifiedKey(chain=(issued.leaf, self.ca.certificate), key=issued.key)

    def test_shape(self) -> None:
        """
        The value is Kong's JSON object: "key" a PKCS#8 PEM, "cert" the PEM
        chain, leaf first.
        """
        obj = json.loads(keys.encode_cert_key(self.certified))
        self.assertEqual(sorted(obj), ["cert", "key"])
        self.assertTrue(obj["key"].startswith("-----BEGIN PRIVATE KEY-----\n"))
        self.assertEqual(obj["cert"].encode("ascii"), self.certified.chain_pem())
        self.assertEqual(obj["cert"].count("BEGIN CERTIFICATE"), 2)

    def test_round_trip(self) -> None:
        """
        decode_cert_key gives back the chain and key, sourced from the key.
        """
        source = keys.cert_key("a.example")
        decoded = keys.decode_cert_key(keys.encode_cert_key(self.certified), source)
        self.assertEqual(decoded.chain, self.certified.chain)
        self.assertEqual(decoded.key_pem(), self.certified.key_pem())
        self.assertEqual(decoded.source, source)

    def test_cjson_escapes(self) -> None:
        """
        A value written by Kong's cjson ("/" escaped as "\\/") decodes.
        """
        kong = keys.encode_cert_key(self.certified).replace(b"/", b"\\/")
        decoded = keys.decode_cert_key(kong, "k")
        self.assertEqual(decoded.chain, self.certified.chain)

    def assertCorrupt(self, value: bytes, pattern: str, error: type = StorageValueError) -> None:
        source = keys.cert_key("a.example")
        e = self.assertRaises(error, keys.decode_cert_key, value, source)
        self.assertIsInstance(e, ValueError)
        self.assertEqual(e.key, source)
        self.assertIn(source, str(e))
        self.assertRegex(e.reason, pattern)

    def test_wrong_json(self) -> None:
        """
        Not JSON, not an object, a missing or non-string field: a
        StorageValueError naming the key.
        """
        self.assertCorrupt(b"{", "not JSON")
        self.assertCorrupt(b"\xff\xfe", "not JSON")
        self.assertCorrupt(b"[1]", "JSON object")
        self.assertCorrupt(b'{"key": "x"}', "'cert'")
        self.assertCorrupt(b'{"key": 1, "cert": "x"}', "wrong type")

    def test_truncated_pem(self) -> None:
        """
        A truncated certificate or key is a StoredCertificateError, which
        is also a CertificateError whose source is the key.
        """
        obj = json.loads(keys.encode_cert_key(self.certified))
        for field in ("cert", "key"):
            broken = dict(obj, **{field: obj[field][: len(obj[field]) // 2]})
            self.assertCorrupt(json.dumps(broken).encode(), ".", StoredCertificateError)
        e = self.assertRaises(CertificateError, keys.decode_cert_key, b'{"key": "", "cert": ""}', "src")
        self.assertEqual(e.source, "src")

    def test_mismatched_key(self) -> None:
        """
        A key that does not belong to the leaf is a StoredCertificateError.
        """
        other = self.ca.issue(["c.example"])
        mixed = CertifiedKey(chain=self.certified.chain, key=other.key)
        self.assertCorrupt(keys.encode_cert_key(mixed), "does not match", StoredCertificateError)


class OtherValueTests(SynchronousTestCase):
    """
    Tests for the account, renew_config, backoff, renew_last_run and
    http-01 values.
    """

    def test_account(self) -> None:
        """
        The account value is {"key": PEM}; decode checks that it parses and
        reports a broken key naming the key.
        """
        pem = TestCA.create().issue(["a.example"]).key_pem()
        value = keys.encode_account(pem)
        self.assertEqual(json.loads(value), {"key": pem.decode("ascii")})
        self.assertEqual(keys.decode_account(value, "acct"), pem)
        self.assertEqual(keys.decode_account(keys.encode_account(pem.decode("ascii")), "acct"), pem)
        e = self.assertRaises(StorageValueError, keys.decode_account, keys.encode_account(pem[:100]), "acct")
        self.assertEqual(e.key, "acct")
        self.assertRaises(StorageValueError, keys.decode_account, b'{"kid": "x"}', "acct")

    def test_renew_config(self) -> None:
        """
        renew_config is {"host", "expire_at"} with an integer expire_at;
        Kong's own values and floats decode.
        """
        value = keys.encode_renew_config("a.example", 1700000000.75)
        self.assertEqual(json.loads(value), {"host": "a.example", "expire_at": 1700000000})
        self.assertNotIn(b".", value.split(b"expire_at")[1])
        self.assertEqual(keys.decode_renew_config(value), keys.RenewConfig("a.example", 1700000000.0))
        kong = b'{"expire_at":1712345678,"host":"b.example"}'
        self.assertEqual(keys.decode_renew_config(kong).expire_at, 1712345678.0)
        self.assertEqual(keys.decode_renew_config(b'{"host":"c","expire_at":1.5}').expire_at, 1.5)
        for bad in (b'{"host":"c"}', b'{"host":"c","expire_at":true}', b'{"host":1,"expire_at":1}', b"1"):
            self.assertRaises(StorageValueError, keys.decode_renew_config, bad, "rc")

    def test_backoff(self) -> None:
        """
        A backoff value is "%d" epoch seconds; anything Lua's tonumber reads
        decodes; other bytes raise StorageValueError.
        """
        self.assertEqual(keys.encode_backoff(1700000300.9), b"1700000300")
        self.assertEqual(keys.decode_backoff(b"1700000300"), 1700000300.0)
        self.assertEqual(keys.decode_backoff(b" 12.5 "), 12.5)
        for bad in (b"", b"soon", b"nan", b"inf", b"\xff"):
            e = self.assertRaises(StorageValueError, keys.decode_backoff, bad, "kong_acme:fail_backoff:h")
            self.assertEqual(e.key, "kong_acme:fail_backoff:h")

    def test_renew_last_run(self) -> None:
        """
        renew_last_run is ngx.localtime(): "YYYY-mm-dd HH:MM:SS" in local
        time, read back to the same whole second.
        """
        value = keys.encode_renew_last_run(1700000000.4)
        self.assertRegex(value.decode("ascii"), r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$")
        self.assertEqual(keys.decode_renew_last_run(value), 1700000000.0)
        self.assertRaises(StorageValueError, keys.decode_renew_last_run, b"yesterday")

    def test_key_authorization(self) -> None:
        """
        An http-01 value is the key authorization's ASCII bytes.
        """
        self.assertEqual(keys.encode_key_authorization("tok.thumb"), b"tok.thumb")
        self.assertEqual(keys.decode_key_authorization(b"tok.thumb"), "tok.thumb")
        self.assertRaises(StorageValueError, keys.decode_key_authorization, b"\xff")

    def test_not_bytes(self) -> None:
        """
        Decoders refuse a str with TypeError (values are bytes).
        """
        self.assertRaises(TypeError, keys.decode_backoff, "12")
        self.assertRaises(TypeError, keys.decode_renew_config, '{"host":"a","expire_at":1}')


class ProviderTransformTests(SynchronousTestCase):
    """
    Tests for the Redis namespace and Consul/Vault key transforms.
    """

    def test_redis_namespace(self) -> None:
        """
        Kong glues the Redis namespace to the key with no separator;
        redis_unkey undoes it and refuses keys outside the namespace.
        """
        self.assertEqual(keys.redis_key("", "kong_acme:cert_key:a"), "kong_acme:cert_key:a")
        self.assertEqual(keys.redis_key("prod:", "kong_acme:cert_key:a"), "prod:kong_acme:cert_key:a")
        self.assertEqual(keys.redis_unkey("prod:", "prod:kong_acme:cert_key:a"), "kong_acme:cert_key:a")
        self.assertRaises(ValueError, keys.redis_unkey, "prod:", "test:kong_acme:cert_key:a")

    def test_redis_match(self) -> None:
        """
        The SCAN pattern matches the namespaced prefix literally: glob
        characters and backslashes are escaped, then "*".
        """
        self.assertEqual(keys.redis_match("", "kong_acme:cert_key:"), "kong_acme:cert_key:*")
        self.assertEqual(keys.redis_match("ns*", "p?[a]\\"), "ns\\*p\\?\\[a\\]\\\\*")

    def test_redis_match_semantics(self) -> None:
        """
        Read as a Redis glob (backslash escapes), the pattern matches
        exactly the keys with the literal prefix.
        """
        pattern = keys.redis_match("n[s]:", "*.example?")
        regex = re.compile(re.sub(r"\\(.)|\*", lambda m: re.escape(m.group(1)) if m.group(1) else ".*", pattern) + "$")
        self.assertTrue(regex.match("n[s]:*.example?.com"))
        self.assertFalse(regex.match("n[s]:a.example?.com"))
        self.assertFalse(regex.match("ns:*.example?.com"))

    def test_slash_to_dash(self) -> None:
        """
        Consul and Vault keys have every "/" replaced by "-" (lossy).
        """
        key = keys.account_key("https://ca.example/dir", "a~?@x.io")
        self.assertEqual(keys.slash_to_dash(key), "kong_acme:account:https:--ca.example-dir:YX4-QHguaW8=")
        self.assertEqual(keys.slash_to_dash("a/b"), keys.slash_to_dash("a-b"))
        self.assertEqual(keys.slash_to_dash(keys.cert_key("a.example")), "kong_acme:cert_key:a.example")
