"""
Tests for kongacme.failures.
"""

from __future__ import annotations

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.error import ConnectionLost, ConnectionRefusedError, DNSLookupError
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import RequestTransmissionFailed, ResponseFailed, ResponseNeverReceived

from kongacme.failures import describe_failure


class DescribeFailureTests(SynchronousTestCase):
    """
    Tests for describe_failure.
    """

    def test_plain(self) -> None:
        """
        Any other exception reads "Type: message", or just the type when it
        has no message.
        """
        self.assertEqual(describe_failure(Failure(ValueError("bad value"))), "ValueError: bad value")
        self.assertEqual(describe_failure(Failure(KeyError())), "KeyError")

    def test_refused(self) -> None:
        """
        A refused connection says so in plain words.
        """
        self.assertEqual(describe_failure(Failure(ConnectionRefusedError())), "connection refused")

    def test_wrapped(self) -> None:
        """
        Twisted's web client wrappers say what happened to the request and
        then every cause.
        """
        lost = Failure(ConnectionLost("gone"))
        refused = Failure(ConnectionRefusedError())
        self.assertEqual(
            describe_failure(Failure(ResponseNeverReceived([lost]))),
            "connection lost before an answer (ConnectionLost: Connection to the other side was lost in a "
            "non-clean fashion: gone.)",
        )
        self.assertEqual(
            describe_failure(Failure(ResponseFailed([refused, Failure(DNSLookupError("x"))]))),
            "answer cut off (connection refused; DNSLookupError: DNS lookup failed: x.)",
        )
        self.assertEqual(describe_failure(Failure(RequestTransmissionFailed([]))), "request not sent")

    def test_tls(self) -> None:
        """
        OpenSSL's error list and service_identity's name mismatch are TLS
        handshake failures with OpenSSL's reasons.
        """
        error = SSL.Error([("SSL routines", "", "certificate verify failed")])
        self.assertEqual(describe_failure(Failure(error)), "TLS handshake failed (certificate verify failed)")
        described = describe_failure(Failure(ResponseNeverReceived([Failure(VerificationError(errors=[]))])))
        self.assertIn("TLS handshake failed (the certificate does not name the server", described)
