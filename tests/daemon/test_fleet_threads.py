"""
A gateway whose database stops answering (knocker.daemon.fleet.ThreadedStore):
a frozen server behind a kernel that still ACKs trips no socket timeout, so
the calls themselves are bounded: each fails after a deadline (the knock gets
ERROR server-error, not silence), at most so many wait at once (a flood of
PROOFs queues nothing more), and stopping the daemon neither hangs on the
stuck threads nor on reading the closes it must run.
"""

import threading
import time

from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase

from knocker.daemon.fleet import ThreadedStore
from knocker.state.interface import PendingClose, StateError
from tests.helpers import postgres


class FrozenDatabase:
    """
    A store whose calls block until C{thaw} is set, as a PostgreSQL server
    stopped with SIGSTOP does.
    """

    path = "postgresql://frozen.invalid/knocker"
    gateway = "gw1"

    def __init__(self):
        self.thaw = threading.Event()
        self.entered = 0

    def client(self, client):
        self.entered += 1
        self.thaw.wait(30)
        return None

    def pending_closes(self):
        self.thaw.wait(30)
        return []

    def close(self):
        pass


class FrozenDatabaseTests(TestCase):
    def setUp(self):
        self.db = FrozenDatabase()
        self.addCleanup(self.db.thaw.set)

    def store(self, **bounds) -> ThreadedStore:
        store = ThreadedStore(self.db, reactor, threads=2, **bounds)
        self.addCleanup(store.close)
        return store

    async def test_a_call_past_its_deadline_fails(self):
        store = self.store(deadline=0.3)
        started = time.monotonic()
        with self.assertRaises(StateError) as raised:
            await store.client("alice")
        self.assertLess(time.monotonic() - started, 5)
        self.assertIn("no answer within 0.3s", str(raised.exception))

    async def test_calls_past_the_bound_fail_at_once(self):
        store = self.store(most=5, deadline=5)
        waiting = [store.client(f"c{i}") for i in range(5)]
        for d in waiting:
            d.addErrback(lambda failure: None)
        started = time.monotonic()
        with self.assertRaises(StateError) as raised:
            await store.client("one-too-many")
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertIn("5 calls already waiting", str(raised.exception))
        self.assertLessEqual(self.db.entered, 2, "no more than the threads entered")
        self.db.thaw.set()
        for d in waiting:
            await d
        self.assertEqual(store.calls, 0, "the count follows the calls that ended")
        self.assertIsNone(await store.client("after"))

    async def test_a_call_past_its_deadline_before_a_thread_took_it_never_runs(self):
        """
        A burn that waited for a thread past its deadline was answered
        ERROR server-error: run later, it would spend a number nobody is
        granted (and the client's retry another).
        """
        burned = []
        self.db.burn = lambda client, secret_id=None: burned.append(client) or 1
        store = ThreadedStore(self.db, reactor, threads=1, deadline=0.3)
        self.addCleanup(store.close)
        stuck = store.client("alice")  # holds the one thread
        with self.assertRaises(StateError):
            await store.burn("bob", "id")
        self.db.thaw.set()
        with self.assertRaises(StateError):
            await stuck
        self.assertEqual(await store.burn("carol", "id"), 1)
        self.assertEqual(burned, ["carol"], "bob's burn never ran")

    def test_the_closes_at_stop_fall_back_to_this_runs(self):
        store = self.store(deadline=0.3)
        self.db.thaw.set()
        self.assertEqual(store.pending_closes(), [], "read at start")
        self.db.thaw.clear()  # the database stops answering while the gateway runs
        store._closes[7] = PendingClose(7, 100.0, "192.0.2.7", "alice", 3)
        started = time.monotonic()
        closes = store.pending_closes()
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual([close.id for close in closes], [7])

    def test_a_start_that_cannot_read_the_closes_fails(self):
        """
        Before the closes earlier runs left have been read, there is no
        fallback: this run knows of none, and a crashed run's doors would
        stay open while the gateway served.
        """
        store = self.store(deadline=0.3)
        with self.assertRaises(StateError) as raised:
            store.pending_closes()
        self.assertIn("closes earlier runs left pending", str(raised.exception))
        self.assertIn("no answer within 0.3s", str(raised.exception))

    def test_stopping_does_not_wait_for_a_stuck_thread(self):
        store = ThreadedStore(self.db, reactor, threads=1, deadline=0.3)
        d = store.client("alice")
        d.addErrback(lambda failure: None)
        deadline = time.monotonic() + 5
        while not self.db.entered and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        store.close()
        self.assertLess(time.monotonic() - started, 3)


class SlowSaves:
    """
    A store whose batch of lockout saves waits for C{go}; every lockout
    write is noted in the order it reached the database.
    """

    path = "postgresql://slow.invalid/knocker"
    gateway = "gw1"

    def __init__(self):
        self.go = threading.Event()
        self.order = []
        self.named = []  # the lift each lockout write named
        self.behind = False  # what each says: whether it found lifts not taken

    def save_lockouts(self, lockouts, steps, lifts_seen=None):
        self.go.wait(30)
        self.order.append(("save", sorted(lockouts)))
        self.named.append(lifts_seen)
        return self.behind

    def lift_lockouts(self, key):
        self.order.append(("lift", key))

    def set_lockout(self, key, until, lifts_seen=None):
        self.order.append(("set", key))
        self.named.append(lifts_seen)
        return self.behind

    def close(self):
        pass


class LockoutWriteOrderTests(TestCase):
    async def test_a_lift_asked_after_a_batch_commits_after_it(self):
        """
        With several database threads, a lift asked for after a batch of
        saves would otherwise commit first, and the batch's row bring the
        lockout back on every gateway.
        """
        db = SlowSaves()
        self.addCleanup(db.go.set)
        store = ThreadedStore(db, reactor, threads=4)
        self.addCleanup(store.close)
        saving = store.save_lockouts({"192.0.2.1": 2e9, "192.0.2.2": 2e9})
        lifting = store.lift_lockouts("192.0.2.1")
        setting = store.set_lockout("*", 2e9)
        await deferLater(reactor, 0.3, lambda: None)  # time for a thread to lift first
        self.assertEqual(db.order, [])
        db.go.set()
        await saving
        await lifting
        await setting
        self.assertEqual(db.order, [("save", ["192.0.2.1", "192.0.2.2"]), ("lift", "192.0.2.1"),
                                    ("set", "*")])


    async def test_each_write_names_the_last_lift_taken_when_it_was_asked(self):
        """
        A write waiting in the queue while this gateway takes a lift (made
        on another) names the lift it knew when it was asked: the database
        then leaves out what the new lift covers.
        """
        db = SlowSaves()
        self.addCleanup(db.go.set)
        store = ThreadedStore(db, reactor, threads=2)
        self.addCleanup(store.close)
        store.lifts_seen = 7
        saving = store.save_lockouts({"192.0.2.1": 2e9})
        store.lifts_seen = 8  # LockoutSync read lift 8 meanwhile
        setting = store.set_lockout("*", 2e9)
        db.go.set()
        await saving
        await setting
        self.assertEqual(db.named, [7, 8])

    async def test_a_write_that_found_lifts_not_taken_has_them_read(self):
        db = SlowSaves()
        db.go.set()
        store = ThreadedStore(db, reactor, threads=2)
        self.addCleanup(store.close)
        reads = []
        store.missed_lifts = lambda: reads.append("lifts")
        await store.save_lockouts({"192.0.2.1": 2e9})
        self.assertEqual(reads, [], "none missed")
        db.behind = True
        await store.save_lockouts({"192.0.2.1": 2e9})
        await store.set_lockout("*", 2e9)
        self.assertEqual(reads, ["lifts", "lifts"])

    async def test_the_servers_lockout_goes_ahead_of_batches_not_of_lifts(self):
        """
        The fleet must hear of the server's lockout within a second: it
        passes the batches of source lockouts waiting (a flood's, on a
        slow database), but not a lift asked before it (which would then
        delete it), and neither a full queue nor a flood of calls refuses it.
        """
        from knocker.daemon.fleet import MAX_LOCKOUT_WRITES

        db = SlowSaves()
        self.addCleanup(db.go.set)
        store = ThreadedStore(db, reactor, threads=4, most=MAX_LOCKOUT_WRITES + 2)
        self.addCleanup(store.close)
        first = store.save_lockouts({"192.0.2.1": 2e9})  # running, held by the database
        lifting = store.lift_lockouts("192.0.2.9")
        batches = [store.save_lockouts({f"192.0.2.{n}": 2e9})
                   for n in range(2, 2 + MAX_LOCKOUT_WRITES)]
        refused = [d for d in batches if d.called]
        self.assertTrue(refused, "the queue of batches is full")
        for d in refused:
            d.addErrback(lambda failure: None)
        setting = store.set_lockout("*", 2e9)
        self.assertFalse(setting.called, "taken, not refused")
        db.go.set()
        await first
        await lifting
        await setting
        for d in batches:
            if d not in refused:
                await d
        self.assertEqual(db.order[:4], [("save", ["192.0.2.1"]), ("lift", "192.0.2.9"),
                                        ("set", "*"), ("save", ["192.0.2.2"])])

    async def test_a_flood_of_calls_neither_refuses_nor_delays_the_servers_lockout(self):
        """
        Every database thread held by a lookup, more lookups queued behind
        them, the call bound reached: the server's lockout is still
        written at once, on a thread of its own.
        """
        db = SlowSaves()
        self.addCleanup(db.go.set)
        db.client = lambda client: db.go.wait(30)
        store = ThreadedStore(db, reactor, threads=2, most=6, deadline=1)
        self.addCleanup(store.close)
        looking_up = [store.client(f"c{n}") for n in range(6)]  # 2 running, 4 queued
        for d in looking_up:
            d.addErrback(lambda failure: None)
        refused = store.client("one-too-many")
        with self.assertRaises(StateError):
            await refused
        started = time.monotonic()
        await store.set_lockout("*", 2e9)
        self.assertLess(time.monotonic() - started, 0.5)
        self.assertEqual(db.order, [("set", "*")])
        db.go.set()

    async def test_the_order_holds_past_a_deadline_and_the_queue_is_bounded(self):
        """
        A batch past its deadline has failed for its caller, but its thread
        may still commit: the lift waits for that thread, not for the
        deadline.  And lockout writes waiting their turn are bounded, so a
        lift behind a stuck database fails at once instead of minutes later.
        """
        from knocker.daemon.fleet import MAX_LOCKOUT_WRITES

        db = SlowSaves()
        self.addCleanup(db.go.set)
        store = ThreadedStore(db, reactor, threads=4, deadline=0.3)
        self.addCleanup(store.close)
        saving = store.save_lockouts({"192.0.2.1": 2e9})
        lifting = store.lift_lockouts("192.0.2.1")
        with self.assertRaises(StateError):
            await saving  # past its deadline, the thread still in the call
        queued = [store.save_lockouts({f"192.0.2.{n}": 2e9}) for n in range(2, 40)]
        failed_at_once = [d for d in queued if d.called]
        self.assertEqual(len(failed_at_once), len(queued) - (MAX_LOCKOUT_WRITES - 2))
        for d in queued:
            d.addErrback(lambda failure: None)
        self.assertEqual(db.order, [])
        db.go.set()
        await lifting
        self.assertEqual(db.order[:2], [("save", ["192.0.2.1"]), ("lift", "192.0.2.1")])
        for d in queued:
            await d  # the rest run in turn


    async def test_a_write_asked_after_close_fails_at_once(self):
        """
        Closed, the thread pool drops a call without a word: a lockout
        write waiting its turn then fails at once instead of holding the
        lane for good.
        """
        db = SlowSaves()
        db.go.set()
        store = ThreadedStore(db, reactor, threads=2, deadline=5)
        store.close()
        with self.assertRaises(StateError) as raised:
            await store.lift_lockouts("192.0.2.1")
        self.assertIn("closed", str(raised.exception))
        self.assertEqual((store.calls, store._lockout_queue), (0, 0))


class LostBetweenReads:
    """
    A gateway's raw store as the database restarts under it: the revoked
    files and the lockouts are read, the pending closes are not.
    """

    path = "postgresql://db.invalid/knocker"
    gateway = "gw1"

    def __init__(self, store):
        self._store = store

    def __getattr__(self, name):
        return getattr(self._store, name)

    def pending_closes(self):
        raise StateError("connection refused")


class LostAfterOneRead(LostBetweenReads):
    """The closes are read once; a second read would fail."""

    reads = 0

    def pending_closes(self):
        self.reads += 1
        if self.reads > 1:
            raise StateError("connection refused")
        return self._store.pending_closes()


class RestartTests(TestCase):
    def test_the_closes_are_read_once_at_start(self):
        """
        A second read that failed would fall back to this run's closes
        (none): the start reads them once and runs what it read.
        """
        from tests.helpers.harness import Harness

        harness = Harness(self, **{"on-close": "/bin/true"})
        harness.store.add_close(harness.server._wall.now() - 5, "10.0.0.5", "alice", 1)
        raw = LostAfterOneRead(harness.store)
        store = ThreadedStore(raw, reactor, deadline=5)
        self.addCleanup(store.close)
        harness.server._store = store
        harness.server.closes._store = store
        harness.server.restore()
        self.assertEqual(raw.reads, 1)
        self.assertEqual(len(harness.server.closes._timers), 1, "the crashed run's close runs")

    def test_a_restart_that_cannot_read_a_crashed_runs_closes_does_not_serve(self):
        from tests.helpers.harness import Harness

        harness = Harness(self, **{"on-close": "/bin/true"})
        wall_now = harness.server._wall.now()
        harness.store.add_close(wall_now - 5, "10.0.0.5", "alice", 1)  # left by a crash
        store = ThreadedStore(LostBetweenReads(harness.store), reactor, deadline=5)
        self.addCleanup(store.close)
        harness.server._store = store
        harness.server.closes._store = store
        with self.assertRaises(StateError) as raised:
            harness.server.restore()
        self.assertIn("closes earlier runs left pending", str(raised.exception))
        self.assertEqual(len(harness.store.pending_closes()), 1, "still there for the next start")


class LockoutSyncTests(TestCase):
    """
    A row the tracker cannot take, or a failure past the read, must not
    leave a read under way for ever: the lockouts would stop following the
    fleet's without a word.
    """

    def test_a_row_that_cannot_be_applied_does_not_stop_the_reads(self):
        from twisted.internet.defer import succeed
        from twisted.internet.task import Clock

        from knocker.daemon.audit import MemoryAudit
        from knocker.daemon.fleet import LockoutSync

        reads = []

        class Rows:
            path = "postgresql://test.invalid/knocker"

            def read_lockouts(self, since, page, prune_at):
                reads.append(since)
                # (each read a later end: a lockout set again, to be taken again)
                return succeed([(len(reads) * 2 - 1, "198.51.100.1", 2e9 + len(reads), 0),
                                (len(reads) * 2, "198.51.100.2", 2e9 + len(reads), 0)])

        class Tracker:
            taken = []

            def source_until(self, key):
                return 0.0, 0

            def shared_lockout(self, key, until, step):
                if key == "198.51.100.1":
                    raise ValueError("a row this tracker cannot take")
                self.taken.append(key)

        class Wall:
            def now(self):
                return 1e9

            def from_wall(self, until):
                return until

        tracker = Tracker()
        sync = LockoutSync(Clock(), Rows(), None, tracker, Wall(), MemoryAudit())
        sync.read_all()
        sync.read_all()
        self.assertEqual(reads, [0, 2], "the second read ran, from past both rows")
        self.assertEqual(tracker.taken, ["198.51.100.2", "198.51.100.2"])
        self.assertEqual(len(self.flushLoggedErrors(ValueError)), 2)

        # A failure past the read itself (here: telling that the database
        # answers) ends that read too.
        def broken(*args):
            raise RuntimeError("an observer that fails")

        self.patch(sync, "_set_available", broken)
        sync.read_all()
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.patch(sync, "_set_available", lambda *args: None)
        sync.read_all()
        self.assertEqual(len(reads), 4, "the read after the failed one ran")
        self.flushLoggedErrors(ValueError)  # its row, read again


class PendingClosesConnectionTests(TestCase):
    """
    The closes are read in a thread of its own (bounded by the deadline);
    the connection that thread opens is closed with it, not kept for the
    gateway's life, one more at every read.
    """

    skip = postgres.skip_reason()

    def test_each_read_leaves_no_connection_behind(self):
        from knocker.state.postgres import PostgresStore

        uri = postgres.database_for(self)
        raw = PostgresStore(uri, bytes(range(32)))
        self.addCleanup(raw.close)
        store = ThreadedStore(raw, reactor, threads=1, deadline=5)
        self.addCleanup(store.close)
        count = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                 "AND pid <> pg_backend_pid()")
        before = raw._run(lambda c: c.execute(count).fetchone()[0])
        for _ in range(3):
            self.assertEqual(store.pending_closes(), [])
        self.assertEqual(raw._run(lambda c: c.execute(count).fetchone()[0]), before)
