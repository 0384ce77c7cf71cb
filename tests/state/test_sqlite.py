"""
The server's durable state in SQLite (docs/spec.md sections 2 and 7): a burned knock
number is never handed out again, across restarts.
"""

import os
import shutil
import sqlite3
import stat
import tempfile

from twisted.trial.unittest import SynchronousTestCase

from knocker.state.interface import ClientState, PendingClose, secret_id
from knocker.state.sqlite import SQLiteStore

SECRET = bytes(range(32))


class StoreTestCase(SynchronousTestCase):
    def setUp(self):
        parent = tempfile.mkdtemp(prefix="knocker-test-")
        self.addCleanup(shutil.rmtree, parent, True)
        self.state_dir = os.path.join(parent, "state")
        self.store = self.open()

    def open(self) -> SQLiteStore:
        store = SQLiteStore(self.state_dir)
        self.addCleanup(store.close)
        return store

    def reopen(self) -> SQLiteStore:
        """
        Close the store and open it again, as a restarted server would.
        """
        self.store.close()
        self.store = self.open()
        return self.store


class _FailingCommit:
    """
    The store's connection, whose next COMMIT fails as a full disk or an
    fsync error would, leaving the transaction open.
    """

    def __init__(self, db):
        self._db = db
        self.fail_next = True

    def execute(self, sql, *args):
        if sql == "COMMIT" and self.fail_next:
            self.fail_next = False
            raise sqlite3.OperationalError("disk I/O error")
        return self._db.execute(sql, *args)

    def __getattr__(self, name):
        return getattr(self._db, name)


class FailedCommitTests(StoreTestCase):
    def test_a_failed_commit_burns_nothing_and_the_next_burn_works(self):
        """
        The burn whose COMMIT failed is not durable, so it is not kept (its
        caller grants nothing), and the store goes on: the next burn hands
        out that same number, durably.
        """
        self.store.register("alice", 10, SECRET)
        self.store._db = _FailingCommit(self.store._db)
        with self.assertRaises(sqlite3.OperationalError):
            self.store.burn("alice")
        self.assertEqual(self.store.burn("alice"), 1)
        self.assertEqual(self.reopen().client("alice").next_index, 2)


class BurnTests(StoreTestCase):
    def test_burn_counts_up_then_none(self):
        self.store.register("alice", 5, SECRET)
        self.assertEqual([self.store.burn("alice") for _ in range(7)], [1, 2, 3, 4, 5, None, None])

    def test_never_repeats_across_reopen(self):
        self.store.register("alice", 6, SECRET)
        burned = [self.store.burn("alice"), self.store.burn("alice")]
        self.reopen()
        burned.append(self.store.burn("alice"))
        self.reopen()
        burned += [self.store.burn("alice") for _ in range(4)]
        self.assertEqual(burned, [1, 2, 3, 4, 5, 6, None])

    def test_exhausted_stays_exhausted_across_reopen(self):
        self.store.register("alice", 1, SECRET)
        self.assertEqual(self.store.burn("alice"), 1)
        self.reopen()
        self.assertIsNone(self.store.burn("alice"))

    def test_second_store_sees_burn(self):
        """
        The burn is committed when burn() returns: another connection to
        the same database sees it at once.
        """
        self.store.register("alice", 3, SECRET)
        self.assertEqual(self.store.burn("alice"), 1)
        other = self.open()
        self.assertEqual(other.burn("alice"), 2)
        self.assertEqual(self.store.burn("alice"), 3)

    def test_unknown_client(self):
        self.assertIsNone(self.store.burn("mallory"))
        self.assertIsNone(self.store.client("mallory"))

    def test_clients_are_separate(self):
        self.store.register("alice", 3, SECRET)
        self.store.register("bob", 3, SECRET)
        self.assertEqual(self.store.burn("alice"), 1)
        self.assertEqual(self.store.burn("alice"), 2)
        self.assertEqual(self.store.burn("bob"), 1)

    def test_register_resets(self):
        self.store.register("alice", 3, SECRET)
        self.store.burn("alice")
        self.store.burn("alice")
        self.store.register("alice", 10, SECRET)
        self.assertEqual(self.store.client("alice"), ClientState("alice", 1, 10, secret_id(SECRET)))
        self.assertEqual(self.store.burn("alice"), 1)

    def test_register_after_exhausted(self):
        self.store.register("alice", 1, SECRET)
        self.store.burn("alice")
        self.assertIsNone(self.store.burn("alice"))
        self.store.register("alice", 2, SECRET)
        self.assertEqual(self.store.burn("alice"), 1)

    def test_client_state(self):
        self.store.register("alice", 10, SECRET)
        self.store.burn("alice")
        self.store.burn("alice")
        state = self.store.client("alice")
        self.assertEqual(state, ClientState("alice", 3, 10, secret_id(SECRET)))
        self.assertEqual(state.left, 8)

    def test_left_zero_when_exhausted(self):
        self.store.register("alice", 2, SECRET)
        for _ in range(3):
            self.store.burn("alice")
        self.assertEqual(self.store.client("alice").left, 0)

    def test_clients_sorted(self):
        self.store.register("carol", 1, SECRET)
        self.store.register("alice", 2, SECRET)
        self.store.register("bob", 3, SECRET)
        self.assertEqual(
            self.store.clients(),
            [ClientState("alice", 1, 2, secret_id(SECRET)), ClientState("bob", 1, 3, secret_id(SECRET)), ClientState("carol", 1, 1, secret_id(SECRET))],
        )
        self.reopen()
        self.assertEqual([c.client for c in self.store.clients()], ["alice", "bob", "carol"])


class PoolTests(StoreTestCase):
    def test_no_pool_at_first(self):
        self.assertIsNone(self.store.pool())

    def test_set_get(self):
        self.store.set_pool((10001, 10050, 31999))
        self.assertEqual(self.store.pool(), (10001, 10050, 31999))

    def test_persists(self):
        pool = tuple(range(20000, 20100))
        self.store.set_pool(pool)
        self.reopen()
        self.assertEqual(self.store.pool(), pool)


class CloseTests(StoreTestCase):
    def test_add_list_remove(self):
        first = self.store.add_close(2000.0, "192.0.2.1", "alice", 4)
        second = self.store.add_close(1000.5, "2001:db8::1", "bob", 7)
        self.assertNotEqual(first, second)
        self.assertEqual(
            self.store.pending_closes(),
            [
                PendingClose(second, 1000.5, "2001:db8::1", "bob", 7),
                PendingClose(first, 2000.0, "192.0.2.1", "alice", 4),
            ],
        )
        self.store.remove_close(second)
        self.assertEqual(
            self.store.pending_closes(), [PendingClose(first, 2000.0, "192.0.2.1", "alice", 4)]
        )

    def test_persist_across_reopen(self):
        first = self.store.add_close(2000.0, "192.0.2.1", "alice", 4)
        second = self.store.add_close(3000.0, "192.0.2.2", "bob", 1)
        self.reopen()
        self.assertEqual(
            self.store.pending_closes(),
            [
                PendingClose(first, 2000.0, "192.0.2.1", "alice", 4),
                PendingClose(second, 3000.0, "192.0.2.2", "bob", 1),
            ],
        )
        self.store.remove_close(first)
        self.reopen()
        self.assertEqual([c.id for c in self.store.pending_closes()], [second])

    def test_remove_unknown(self):
        self.store.add_close(1.0, "192.0.2.1", "alice", 1)
        self.store.remove_close(12345)
        self.assertEqual(len(self.store.pending_closes()), 1)

    def test_ids_not_reused_while_pending(self):
        ids = {self.store.add_close(float(i), "192.0.2.1", "alice", i) for i in range(5)}
        self.assertEqual(len(ids), 5)


class LockoutTests(StoreTestCase):
    def test_set_and_list(self):
        self.store.set_lockout("*", 1060.0)
        self.store.set_lockout("192.0.2.1", 1100.0)
        self.assertEqual(self.store.lockouts(1000.0), {"*": 1060.0, "192.0.2.1": 1100.0})

    def test_persist_across_reopen(self):
        self.store.set_lockout("*", 1060.0)
        self.reopen()
        self.assertEqual(self.store.lockouts(1000.0), {"*": 1060.0})

    def test_expired_dropped(self):
        self.store.set_lockout("192.0.2.1", 1060.0)
        self.store.set_lockout("192.0.2.2", 1100.0)
        self.assertEqual(self.store.lockouts(1060.0), {"192.0.2.2": 1100.0})
        self.reopen()
        # Dropped for good, not merely hidden at that time.
        self.assertEqual(self.store.lockouts(0.0), {"192.0.2.2": 1100.0})

    def test_set_again_replaces(self):
        self.store.set_lockout("*", 1060.0)
        self.store.set_lockout("*", 1200.0)
        self.assertEqual(self.store.lockouts(1000.0), {"*": 1200.0})


class DamagedRowTests(StoreTestCase):
    """
    SQLite keeps what a hand edit puts in a column (text in an INTEGER
    one): such a row is refused where it is read, with a StateError that
    names the file, the table, the row and the column, not a TypeError
    far away (in `knocker status`, or the daemon's start).
    """

    def damage(self, statement):
        db = sqlite3.connect(self.store.path)
        db.execute(statement)
        db.commit()
        db.close()

    def fresh(self):
        """A new state with a row in every table."""
        self.state_dir = tempfile.mkdtemp(prefix="knocker-test-")
        self.addCleanup(shutil.rmtree, self.state_dir, True)
        self.store = store = self.open()
        store.register("alice", 10, bytes(32))
        store.add_close(1000.0, "192.0.2.7", "alice", 1)
        store.set_lockout("*", 2000.0)
        store.add_invitation("bob", "words", 2000.0, 3, 1000.0)
        store.revoke("alice")
        return store

    def test_each_table(self):
        from knocker.state.interface import StateError

        cases = [
            ("UPDATE clients SET next_index = 'abc'", lambda store: store.client("alice"),
             "table clients, row 'alice': next_index holds 'abc', not a whole number"),
            ("UPDATE clients SET knocks = 2.5", lambda store: store.clients(),
             "table clients, row 'alice': knocks holds 2.5, not a whole number"),
            ("UPDATE closes SET due = 'soon'", lambda store: store.pending_closes(),
             "table closes, row 1: due holds 'soon', not a number"),
            ("UPDATE lockouts SET until = x'00'", lambda store: store.lockouts(0.0),
             "table lockouts, row '*': until holds b'\\x00', not a number"),
            ("UPDATE invitations SET tries = 'many'", lambda store: store.invitations(),
             "tries holds 'many', not a whole number"),
            ("UPDATE revoked SET secret_id = x'07'", lambda store: store.revoked(),
             "table revoked, row 'alice': secret_id holds b'\\x07', not text"),
        ]
        for statement, read, words in cases:
            with self.subTest(statement=statement):
                store = self.fresh()
                self.damage(statement)
                error = self.assertRaises(StateError, read, store)
                self.assertIn(store.path, str(error))
                self.assertIn(words, str(error))
                self.assertIn("restore the state from a backup", str(error))


class PermissionTests(SynchronousTestCase):
    def setUp(self):
        parent = tempfile.mkdtemp(prefix="knocker-test-")
        self.addCleanup(shutil.rmtree, parent, True)
        self.state_dir = os.path.join(parent, "var", "state")

    def open(self) -> SQLiteStore:
        store = SQLiteStore(self.state_dir)
        self.addCleanup(store.close)
        return store

    def test_modes(self):
        store = self.open()
        store.register("alice", 3, SECRET)
        store.burn("alice")
        self.assertEqual(stat.S_IMODE(os.stat(self.state_dir).st_mode), 0o700)
        self.assertEqual(store.path, os.path.join(self.state_dir, "state.sqlite"))
        self.assertEqual(stat.S_IMODE(os.stat(store.path).st_mode), 0o600)

    def test_modes_with_open_umask(self):
        old = os.umask(0)
        try:
            store = self.open()
            store.register("alice", 3, SECRET)
            store.burn("alice")
        finally:
            os.umask(old)
        self.assertEqual(stat.S_IMODE(os.stat(self.state_dir).st_mode), 0o700)
        for name in os.listdir(self.state_dir):
            path = os.path.join(self.state_dir, name)
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, name)


class SchemaTests(SynchronousTestCase):
    def test_state_from_another_schema_is_refused(self):
        import sqlite3

        from knocker.state.interface import StateError

        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        db = sqlite3.connect(os.path.join(directory, "state.sqlite"))
        db.execute("CREATE TABLE clients (id TEXT PRIMARY KEY, next_index INTEGER, knocks INTEGER)")
        db.commit()
        db.close()
        error = self.assertRaises(StateError, SQLiteStore, directory)
        self.assertIn("state.sqlite", str(error))
        self.assertIn("schema 0", str(error))

    def test_reopening_keeps_the_schema(self):
        directory = tempfile.mkdtemp()
        self.addCleanup(shutil.rmtree, directory)
        SQLiteStore(directory).close()
        store = SQLiteStore(directory)
        store.register("alice", 2, SECRET)
        self.assertEqual(store.burn("alice"), 1)
        store.close()


class BusyTests(StoreTestCase):
    def test_a_held_write_lock_fails_a_burn_quickly_instead_of_stalling(self):
        """
        Another process holding the write lock (a command, a backup) makes
        a burn fail after busy_timeout, not after five seconds; nothing is
        burned, and once the lock is let go burns go on.
        """
        import sqlite3
        import time

        store = SQLiteStore(self.state_dir, busy_timeout=0.2)
        self.addCleanup(store.close)
        store.register("alice", 5, b"\x01" * 32)
        other = sqlite3.connect(store.path, isolation_level=None)
        self.addCleanup(other.close)
        other.execute("BEGIN IMMEDIATE")
        started = time.monotonic()
        self.assertRaises(sqlite3.OperationalError, store.burn, "alice")
        self.assertLess(time.monotonic() - started, 1.5)
        other.execute("ROLLBACK")
        self.assertEqual(store.burn("alice"), 1, "the failed burn took no number")
