"""
Exceptions raised by kongacme, small classes with fields.
"""

from __future__ import annotations


class ConfigError(Exception):
    """
    A configuration file is invalid.

    :ivar problems: list of ``(path, message)`` pairs, e.g.
        ``("acme.rsa_key_size", "must be one of 2048, 3072, 4096")``.
    """

    def __init__(self, problems: list[tuple[str, str]]):
        self.problems = list(problems)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(f"{path}: {message}" if path else message for path, message in self.problems)


class CertificateError(Exception):
    """
    A certificate or private key could not be loaded.

    :ivar source: where it came from (a path or a storage key).
    :ivar reason: what is wrong with it.
    """

    def __init__(self, source: str, reason: str):
        self.source = source
        self.reason = reason
        super().__init__(f"{source}: {reason}")


class ClientHelloError(Exception):
    """
    The first bytes on a TLS listener are not a TLS ClientHello we accept.
    """
