"""
The boundaries between kongacme's parts, as zope interfaces.

Methods are declared without ``self`` so that
:func:`zope.interface.verify.verifyObject` accepts providers.
"""

from zope.interface import Attribute, Interface


class ICertificateCache(Interface):
    """
    The in-process certificate store read synchronously by the TLS path.

    An issuer fills it; the SNI path only ever reads it.
    """

    def lookup(server_name):
        """
        Choose the certificate for a handshake: exact name, then a wildcard
        one label deep, then the fallback.

        :param server_name: lower-cased SNI host name, or ``None``.
        :return: a :class:`kongacme.tls.certs.CertifiedKey` (never ``None``).
        """

    def get(name):
        """
        The certificate stored under exactly ``name`` (no wildcard, no
        fallback), or ``None``.
        """

    def put(certified_key, names=None):
        """
        Store ``certified_key`` under ``names`` (default: the names in its
        certificate). Takes effect on the next handshake.
        """

    def remove(name):
        """
        Forget the certificate stored under ``name``; no error if absent.
        """

    def names():
        """
        All names with a certificate, as a list of strings.
        """


class IChallengeTokenStore(Interface):
    """
    Where http-01 key authorizations live while the CA validates them.
    The port-80 resource reads it; an issuer writes it.
    """

    def get(token):
        """
        :param token: the challenge token (str).
        :return: ``Deferred`` firing with the key authorization (str), or
            ``None`` when the token is unknown or expired.
        """

    def put(token, key_authorization, ttl=3600):
        """
        Store a key authorization for ``ttl`` seconds.

        :return: ``Deferred`` firing with ``None`` once stored.
        """

    def remove(token):
        """
        :return: ``Deferred`` firing with ``None`` once removed.
        """


class IChallengeSolver(Interface):
    """
    Answers one ACME challenge type (RFC 8555 §8): makes the response
    visible where the CA looks for it, and takes it away afterwards.
    """

    typ = Attribute("the challenge type answered, e.g. 'http-01' or 'dns-01' (str)")

    def present(identifier, challenge, account_key):
        """
        Publish the response to ``challenge`` for ``identifier``.

        :param identifier: the dns identifier's value (no ``*.``: for a
            wildcard authorization, the base name, RFC 8555 §7.1.3).
        :param challenge: the ``acme.challenges.Challenge`` offered.
        :param account_key: the account's ``josepy`` key.
        :return: ``Deferred`` firing, once the CA may validate, with an
            opaque handle for :meth:`cleanup`.
        """

    def cleanup(handle):
        """
        Remove exactly what :meth:`present` published for ``handle``.

        :return: ``Deferred`` firing with ``None``.
        """


class IDNSRecords(Interface):
    """
    Writes and reads the TXT records of dns-01 challenges (RFC 8555
    §8.4) at some DNS provider: RFC 2136 updates today, other providers'
    APIs later.
    """

    def add_txt(name, value, ttl):
        """
        Add one TXT record ``value`` at ``name``, beside any others there.

        :param name: an absolute owner name, ``_acme-challenge.<domain>``.
        :return: ``Deferred`` firing with ``None`` once the provider
            accepted it, failing with :class:`kongacme.errors.DNSError`.
        """

    def remove_txt(name, value):
        """
        Delete the TXT record ``value`` at ``name`` only (records other
        orders added at the same name stay).

        :return: ``Deferred`` firing with ``None``.
        """

    def txt_visible(name, value):
        """
        Whether the provider's authoritative server answers ``value``
        among the TXT records of ``name`` now.

        :return: ``Deferred`` firing with a ``bool``.
        """

    def close():
        """
        Release sockets or connections (at shutdown, or when the issuer is
        replaced on reload); harmless twice.

        :return: ``Deferred`` firing with ``None``.
        """


class IRouter(Interface):
    """
    Maps the host a client asked for to the upstream that serves it.
    """

    def route_for(server_name):
        """
        :param server_name: lower-cased host name or ``None``.
        :return: a :class:`kongacme.proxy.routes.Route`, or ``None`` when
            nothing (not even a default) is configured for it.
        """


class IHandshakeGate(Interface):
    """
    Consulted after a ClientHello has been read and before the TLS engine
    sees it: the one place where a handshake may wait for I/O (on-demand
    issuance holds the first visitor here until its certificate exists).
    """

    def before_handshake(server_name):
        """
        :param server_name: lower-cased SNI host name, or ``None``.
        :return: ``None`` to go ahead at once, or a ``Deferred`` that fires
            when the handshake may go ahead (a failure is logged and the
            handshake continues with whatever the certificate cache holds).
            Its result is ignored, except :data:`GATE_CACHE_FILLED`: the
            wait only filled this process's cache (a worker fetching a
            certificate its master holds), and the handshake is counted as
            not held (``cached`` or ``fallback``, not ``held_then_…``).
        """


#: What an :class:`IHandshakeGate`'s Deferred fires with when the wait only
#: filled the process's own certificate cache (no order was waited for).
GATE_CACHE_FILLED = "cache-filled"


class IConnectionInfo(Interface):
    """
    What the TLS layer learned from the ClientHello, given to the protocol
    it wraps (the proxy) as its ``client_hello`` attribute before
    ``connectionMade``.
    """

    server_name = Attribute("lower-cased SNI host name, or None")
    alpn_offered = Attribute("tuple of ALPN protocol names (bytes) the client offered")


class IStorage(Interface):
    """
    A bytes key-value store with optional time-to-live, the one interface
    behind Kong's storage adapters (shm, kong, redis, consul, vault).

    Keys are ``str``; values are ``bytes``. Every method returns a
    ``Deferred``. A TTL is in seconds (float); ``None`` means no expiry.
    Expiry is judged with the provider's injected clock.
    """

    def get(key):
        """
        :return: ``Deferred`` firing with the value (bytes), or ``None``
            when the key is absent or expired.
        """

    def set(key, value, ttl=None):
        """
        Store ``value`` under ``key``, replacing any previous value.

        :return: ``Deferred`` firing with ``None``.
        """

    def add(key, value, ttl=None):
        """
        Store ``value`` only if ``key`` is absent (or expired): atomic
        set-if-absent.

        :return: ``Deferred`` firing with ``True`` if stored, ``False`` if
            the key already existed.
        """

    def delete(key):
        """
        Remove ``key``; no error if absent.

        :return: ``Deferred`` firing with ``None``.
        """

    def list(prefix):
        """
        :return: ``Deferred`` firing with a list of the (unexpired) keys
            starting with ``prefix``, in no particular order.
        """


class IIssuer(Interface):
    """
    Obtains a certificate for one host name (ACME, in kongacme).
    """

    def issue(host, private_key=None, replaces=None):
        """
        :param host: lower-cased DNS name, already admitted.
        :param private_key: a ``cryptography`` private key to reuse
            (renewal), or ``None`` to generate one per the config.
        :param replaces: the ARI identifier of the certificate renewed
            (RFC 9773 §5), or ``None``.
        :return: ``Deferred`` firing with a
            :class:`kongacme.tls.certs.CertifiedKey`, or failing with
            :class:`kongacme.errors.AcmeProblem` / another error.
        """


class ILease(Interface):
    """
    A held lock. Only its holder (who knows ``token``) can renew or release
    it; a lease not renewed within its TTL expires and others may take it.
    """

    name = Attribute("the lock's name (str)")
    token = Attribute("the owner token (str), unique per acquisition")

    def renew(ttl):
        """
        Extend the lease to ``ttl`` seconds from now, if still held.

        :return: ``Deferred`` firing with ``True``, or ``False`` when the
            lease was lost (expired and maybe taken by someone else).
        """

    def release():
        """
        Give the lock up, only if still held by this lease.

        :return: ``Deferred`` firing with ``True`` if released, ``False``
            if it was no longer ours (nothing is deleted then).
        """


class ILocker(Interface):
    """
    Named locks with an owner token and a lease, shared by every process
    using the same store (Kong's ``update_lock`` keys, done so that the
    lock holds for a whole order).
    """

    def acquire(name, ttl):
        """
        Try once to take lock ``name`` for ``ttl`` seconds.

        :return: ``Deferred`` firing with an :class:`ILease`, or ``None``
            when someone else holds it.
        """


class IAtomicStorage(IStorage):
    """
    An :class:`IStorage` with the two compare-and-swap operations a lock
    needs; every provider offers them (Redis: a Lua script, Vault: CAS
    versions, Consul: ModifyIndex, files: flock, memory: trivially).
    """

    def compare_and_set(key, expected, value, ttl=None):
        """
        Set ``key`` to ``value`` (with ``ttl``) only if its current,
        unexpired value equals ``expected``.

        :return: ``Deferred`` firing with ``True`` if set.
        """

    def compare_and_delete(key, expected):
        """
        Delete ``key`` only if its current, unexpired value equals
        ``expected``.

        :return: ``Deferred`` firing with ``True`` if deleted.
        """


class IChangeFeed(Interface):
    """
    Tells every node at once that a host has a new certificate. Best
    effort: messages may be lost (while a node reconnects), so the polled
    markers stay as the safety net.
    """

    connected = Attribute("whether changes published by other nodes reach this one now (bool)")

    def start(on_change, on_connected):
        """
        Start receiving.

        :param on_change: called with ``(host, fingerprint)`` for each
            change announced by any node (this one included).
        :param on_connected: called each time the feed is (re)connected,
            so that the caller can catch up with what it missed meanwhile.
        """

    def publish(host, fingerprint):
        """
        Announce ``host``'s new certificate to every node.

        :return: ``Deferred`` firing when sent, or failing.
        """

    def stop():
        """
        Stop receiving and close connections; harmless twice.

        :return: ``Deferred`` firing with ``None`` once closed.
        """


class IPollHandler(Interface):
    """
    What the lean engine's event loop (:mod:`kongacme.engine.loop`) calls
    for a registered file descriptor.
    """

    def on_events(fd, events):
        """
        ``events`` (``select.EPOLL*`` bits) happened on ``fd``. An
        exception raised here is logged once and :meth:`abort` is called.
        """

    def abort():
        """Drop everything this handler holds, now (after an unexpected error)."""
