"""
Locks with an owner token and a renewable lease, on any
:class:`~kongacme.interfaces.IAtomicStorage`.

The lock is the storage key itself (Kong's ``kong_acme:update_lock:<host>``)
holding the owner's token, so a Kong node sharing the store sees it held
(its ``add`` fails) and only the owner can renew or release it.

An owner token reads ``<node>:<life>:<acquisition>``. The node id is
stable per node and ``state_dir`` (:func:`node_owner`); the life id is new
in every process. A lock whose token names this node but another life was
left by this node's previous run (killed mid-order): nobody is working
under it, so :meth:`StorageLocker.acquire` takes it over at once, with
compare-and-set, instead of waiting for its lease to run out. Nodes with
other ids (a fleet sharing the store) never take each other's locks.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
from typing import IO, Optional

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from kongacme.interfaces import IAtomicStorage, ILease, ILocker

log = Logger()

#: This process's life id: a restarted daemon is a new life of its node.
PROCESS_LIFE = secrets.token_hex(6)

#: The folder under ``state_dir`` holding the node ids, one file per slot.
NODE_DIR = "node"

#: Processes sharing one ``state_dir`` at the same time (the ``kong``
#: storage allows it) get one slot, and so one node id, each.
MAX_SLOTS = 64

#: Kong's own lock value: a lock held by a Kong node.
KONG_LOCK_VALUE = b"placeholder"


@attrs.frozen
class LockOwner:
    """
    Who takes locks: a node id and the life (process) of that node.

    :ivar node: stable per node and ``state_dir`` (hex, no ``:``).
    :ivar life: new for every process (hex, no ``:``).
    """

    node: str
    life: str

    @classmethod
    def ephemeral(cls) -> "LockOwner":
        """An owner with a node id of its own, never seen again after this life."""
        return cls(secrets.token_hex(8), PROCESS_LIFE)

    def token(self) -> str:
        """A new owner token, unique per acquisition."""
        return "%s:%s:%s" % (self.node, self.life, secrets.token_hex(8))

    def left_by_previous_life(self, value: bytes) -> bool:
        """Whether lock value ``value`` was written by this node in an earlier life."""
        parts = value.split(b":")
        return len(parts) == 3 and parts[0] == self.node.encode("ascii") and parts[1] != self.life.encode("ascii")

    def describe_holder(self, value: bytes) -> str:
        """Who holds a lock whose value is ``value``, in words for a log line."""
        if value == KONG_LOCK_VALUE:
            return "a Kong node"
        parts = value.split(b":")
        if len(parts) != 3:
            return "another process"
        node = parts[0].decode("ascii", "replace")
        if node != self.node:
            return "node %s" % (node,)
        return "this node" if parts[1] == self.life.encode("ascii") else "this node's previous run"


@attrs.define
class NodeClaim:
    """
    A node id claimed in a ``state_dir``: the slot file stays locked
    (``flock``) while this claim is held, so no other process on the host
    uses the same id; the kernel drops the lock when the process ends,
    ``kill -9`` included, and the next process to start takes the slot
    and its id again.

    :ivar node: the node id.
    :ivar slot: which slot file holds it.
    """

    node: str
    slot: int
    _file: IO = attrs.field(repr=False)

    def release(self) -> None:
        """Give the id up (the next claim in this ``state_dir`` may take it)."""
        self._file.close()


def claim_node(state_dir: str, slots: int = MAX_SLOTS) -> NodeClaim:
    """
    Claim the first free node slot in ``state_dir/node/``, creating its id
    (random, persisted 0600) the first time.

    :raise OSError: when every slot is held or the folder is unusable.
    """
    folder = os.path.join(state_dir, NODE_DIR)
    os.makedirs(folder, mode=0o700, exist_ok=True)
    for slot in range(slots):
        path = os.path.join(folder, "id-%d" % (slot,))
        handle = os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            handle.close()
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                continue  # another live process has this slot
            raise
        node = handle.read().strip()
        if not node or not all(c in "0123456789abcdef" for c in node):
            node = secrets.token_hex(8)
            handle.seek(0)
            handle.truncate()
            handle.write(node + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        return NodeClaim(node, slot, handle)
    raise OSError(errno.EBUSY, "all %d node slots in %s are held by running processes" % (slots, folder))


#: The claims this process holds, by real ``state_dir`` path: held for the
#: whole life of the process (a claim is what makes a node id this
#: process's alone), so one per ``state_dir`` ever used.
_claims: dict[str, NodeClaim] = {}


def node_owner(state_dir: str, claims: Optional[dict[str, NodeClaim]] = None) -> LockOwner:
    """
    This process's lock owner for ``state_dir``: the node id it claims
    there (the same id after a restart) and :data:`PROCESS_LIFE`. When no
    id can be claimed, an ephemeral owner (locks a crash leaves then wait
    for their lease to run out), with a warning.

    :param claims: where the claims held are kept (default: this process's).
    """
    if claims is None:
        claims = _claims
    where = os.path.realpath(state_dir)
    claim = claims.get(where)
    if claim is None:
        try:
            claim = claims[where] = claim_node(where)
        except OSError as e:
            owner = LockOwner.ephemeral()
            log.warn("could not claim a node id in {state_dir} ({error}); using {node} for this run only: order "
                     "locks left by a crash will wait for their lease to expire", state_dir=where, error=str(e),
                     node=owner.node)
            return owner
    return LockOwner(claim.node, PROCESS_LIFE)


@implementer(ILease)
@attrs.define
class StorageLease:
    """A held lock: ``name`` holds ``token`` until it expires or is released."""

    name: str
    token: str
    _storage: IAtomicStorage = attrs.field(repr=False)

    def renew(self, ttl: float) -> Deferred:
        """Extend to ``ttl`` seconds from now if still ours: ``Deferred[bool]``."""
        value = self.token.encode("ascii")
        return self._storage.compare_and_set(self.name, value, value, ttl)

    def release(self) -> Deferred:
        """Delete the lock if still ours: ``Deferred[bool]``."""
        return self._storage.compare_and_delete(self.name, self.token.encode("ascii"))


@implementer(ILocker)
@attrs.define
class StorageLocker:
    """
    :class:`ILocker` over an :class:`IAtomicStorage` (``add`` + CAS).

    :param owner: whose tokens it writes; by default an ephemeral node.
    """

    _storage: IAtomicStorage
    owner: LockOwner = attrs.field(factory=LockOwner.ephemeral)

    def acquire(self, name: str, ttl: float) -> Deferred:
        """
        Try once: ``Deferred`` of a :class:`StorageLease`, or ``None`` if
        held. A lock left by this node's previous life is taken over.
        """
        token = self.owner.token()
        encoded = token.encode("ascii")
        lease = StorageLease(name, token, self._storage)

        def added(stored: bool, again: bool) -> object:
            if stored:
                return lease
            return self._storage.get(name).addCallback(current, again)

        def current(value: Optional[bytes], again: bool) -> object:
            if value is None:
                # Expired between the add and the read: one more add.
                return None if again else self._storage.add(name, encoded, ttl).addCallback(added, True)
            if not self.owner.left_by_previous_life(value):
                return None
            return self._storage.compare_and_set(name, value, encoded, ttl).addCallback(taken, value)

        def taken(done: bool, previous: bytes) -> Optional[StorageLease]:
            if not done:
                return None
            log.info("took over lock {name} left by this node's previous run (token {previous})", name=name,
                     previous=previous.decode("ascii", "replace"))
            return lease

        return self._storage.add(name, encoded, ttl).addCallback(added, False)

    def holder(self, name: str) -> Deferred:
        """
        Who holds lock ``name``, in words for a log line (``node <id>``,
        ``a Kong node``…): ``Deferred[str]``, ``None`` when it is free.
        """
        return self._storage.get(name).addCallback(
            lambda value: None if value is None else self.owner.describe_holder(value)
        )
