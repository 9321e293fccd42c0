"""
Tests for kongacme.storage.locks: owner tokens, node ids claimed per
state_dir, and taking over the locks a previous life left.
"""

import os

from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from kongacme.storage import keys
from kongacme.storage.locks import PROCESS_LIFE, LockOwner, NodeClaim, StorageLocker, claim_node, node_owner
from kongacme.testing import MemoryStorage


class LockOwnerTests(SynchronousTestCase):
    """
    Tests for LockOwner.
    """

    def test_token_shape(self):
        """A token reads <node>:<life>:<acquisition>, new for every acquisition."""
        owner = LockOwner("abcd", "ef01")
        first, second = owner.token(), owner.token()
        self.assertTrue(first.startswith("abcd:ef01:"))
        self.assertEqual(len(first.split(":")), 3)
        self.assertNotEqual(first, second)

    def test_previous_life(self):
        """Only a token of this node with another life is a previous life's."""
        owner = LockOwner("abcd", "life2")
        self.assertTrue(owner.left_by_previous_life(b"abcd:life1:99"))
        self.assertFalse(owner.left_by_previous_life(b"abcd:life2:99"))
        self.assertFalse(owner.left_by_previous_life(b"abce:life1:99"))
        self.assertFalse(owner.left_by_previous_life(b"placeholder"))
        self.assertFalse(owner.left_by_previous_life(b"abcd:life1"))
        self.assertFalse(owner.left_by_previous_life(b"0123456789abcdef0123456789abcdef"))

    def test_describe_holder(self):
        """Holders are named for the log line."""
        owner = LockOwner("abcd", "life2")
        self.assertEqual(owner.describe_holder(b"placeholder"), "a Kong node")
        self.assertEqual(owner.describe_holder(b"ffff:x:y"), "node ffff")
        self.assertEqual(owner.describe_holder(b"abcd:life2:y"), "this node")
        self.assertEqual(owner.describe_holder(b"abcd:life1:y"), "this node's previous run")
        self.assertEqual(owner.describe_holder(b"0123456789abcdef"), "another process")

    def test_ephemeral(self):
        """Ephemeral owners are distinct nodes of this process's life."""
        a, b = LockOwner.ephemeral(), LockOwner.ephemeral()
        self.assertNotEqual(a.node, b.node)
        self.assertEqual(a.life, PROCESS_LIFE)


class NodeClaimTests(SynchronousTestCase):
    """
    Tests for claim_node and node_owner: a node id stable per state_dir,
    one per process using it at the same time.
    """

    def setUp(self):
        self.state_dir = os.path.abspath(self.mktemp())

    def claim(self) -> NodeClaim:
        claim = claim_node(self.state_dir)
        self.addCleanup(claim.release)
        return claim

    def test_stable_after_release(self):
        """The id is persisted (0600): a claim after the holder ended gets the same id."""
        first = self.claim()
        node = first.node
        first.release()
        again = self.claim()
        self.assertEqual((again.slot, again.node), (0, node))
        path = os.path.join(self.state_dir, "node", "id-0")
        self.assertEqual(os.stat(path).st_mode & 0o777, 0o600)
        with open(path) as f:
            self.assertEqual(f.read().strip(), node)

    def test_concurrent_claims_differ(self):
        """
        Two processes sharing a state_dir at once (flock per open file, as
        two processes have) get two ids, so they never take each other's
        locks; the first id comes back to the next claim once its holder ends.
        """
        first, second = self.claim(), self.claim()
        self.assertEqual((first.slot, second.slot), (0, 1))
        self.assertNotEqual(first.node, second.node)
        node = first.node
        first.release()
        self.assertEqual(self.claim().node, node)

    def test_all_slots_held(self):
        """When every slot is held the claim fails with OSError."""
        self.addCleanup(claim_node(self.state_dir, slots=1).release)
        self.assertRaises(OSError, claim_node, self.state_dir, 1)

    def test_corrupt_id_replaced(self):
        """A slot file that does not hold a hex id gets a new one."""
        os.makedirs(os.path.join(self.state_dir, "node"))
        with open(os.path.join(self.state_dir, "node", "id-0"), "w") as f:
            f.write("not:an id\n")
        node = self.claim().node
        self.assertEqual(len(node), 16)
        int(node, 16)

    def test_node_owner_once_per_process(self):
        """node_owner claims once per state_dir: the same owner every time, with this process's life."""
        claims: dict = {}
        self.addCleanup(lambda: [c.release() for c in claims.values()])
        owner = node_owner(self.state_dir, claims)
        self.assertEqual(node_owner(self.state_dir + "/.", claims), owner)
        self.assertEqual(owner.life, PROCESS_LIFE)
        self.assertEqual(list(claims.values())[0].node, owner.node)

    def test_node_owner_unusable_state_dir(self):
        """Without a usable state_dir an ephemeral owner is used, with a warning naming the folder."""
        os.makedirs(self.state_dir)
        with open(os.path.join(self.state_dir, "node"), "w") as f:
            f.write("a file where the folder should be")
        events: list = []
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        claims: dict = {}
        owner = node_owner(self.state_dir, claims)
        self.assertEqual(claims, {})
        self.assertEqual(owner.life, PROCESS_LIFE)
        warnings = [e for e in events if "could not claim a node id" in e.get("log_format", "")]
        self.assertEqual(len(warnings), 1)
        self.assertEqual(warnings[0]["state_dir"], os.path.realpath(self.state_dir))


class TakeOverTests(SynchronousTestCase):
    """
    Tests for StorageLocker taking over a previous life's lock, with a Clock.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1_800_000_000)
        self.storage = MemoryStorage(self.clock)
        self.name = keys.update_lock("a.example")

    def test_restart_takes_over_before_expiry(self):
        """The restarted node gets the lock at once, with 30 s of lease left on the old token."""
        old = self.successResultOf(StorageLocker(self.storage, LockOwner("n1", "l1")).acquire(self.name, 30))
        self.clock.advance(1)
        new = self.successResultOf(StorageLocker(self.storage, LockOwner("n1", "l2")).acquire(self.name, 30))
        self.assertIsNotNone(new)
        self.assertFalse(self.successResultOf(old.renew(30)))
        # The taken-over lock has the new lease: still held 29 s later.
        self.clock.advance(29.5)
        self.assertIsNone(self.successResultOf(StorageLocker(self.storage, LockOwner("n9", "x")).acquire(self.name, 30)))

    def test_other_node_waits_for_expiry(self):
        """Another node does not take it; it gets it once the lease has run out."""
        self.successResultOf(StorageLocker(self.storage, LockOwner("n1", "l1")).acquire(self.name, 30))
        other = StorageLocker(self.storage, LockOwner("n2", "l2"))
        self.assertIsNone(self.successResultOf(other.acquire(self.name, 30)))
        self.clock.advance(30.1)
        self.assertIsNotNone(self.successResultOf(other.acquire(self.name, 30)))
