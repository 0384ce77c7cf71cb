"""
L{knocker.daemon.fleet.LockoutSync} on a L{Clock} with a store that
answers through L{Deferred}s: a big read is applied a bounded chunk per
reactor turn with one tracker lookup a row, only rows changed since the
last read are asked for, a notice during a read is not lost, and the
escalation step travels with the lockout.  Also the coordinator saving
source lockouts again after a failed save.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from knocker.core.tracker import GLOBAL, Policy, Tracker
from knocker.daemon import fleet
from knocker.daemon.audit import MemoryAudit
from knocker.daemon.clock import WallTime
from knocker.state.interface import StateError
from tests.helpers.harness import Harness


class TableStore:
    """The lockouts table as rows (seq, key, until, step), read by seq."""

    path = "postgresql:///fleet"

    def __init__(self, rows=()):
        self.rows = list(rows)
        self.reads: list[tuple[int, int, object]] = []
        self.held: list[Deferred] | None = None

    lifts: list[tuple[int, str | None]] = []  # (seq, key) as lift_lockouts writes them

    def read_lifts(self, after):
        if after is None:
            return succeed([(max((seq for seq, _ in self.lifts), default=0), "")])
        return succeed([row for row in self.lifts if row[0] > after])

    def read_lockouts(self, after, limit, prune_before=None):
        self.reads.append((after, limit, prune_before))
        page = [row for row in sorted(self.rows) if row[0] > after][:limit]
        if self.held is not None:
            d = Deferred()
            self.held.append((d, page))
            return d
        return succeed(page)


class TurnByTurn:
    """
    A reactor's C{callLater(0, ...)} as a real reactor runs it: at the next
    turn, not within this one (L{Clock.advance} would run them all at once).
    """

    def __init__(self):
        self.calls = []

    def callLater(self, delay, function, *args):
        call = _Call(function, args)
        self.calls.append(call)
        return call

    def next_turn(self):
        calls, self.calls = self.calls, []
        for call in calls:
            call.run()


class _Call:
    def __init__(self, function, args):
        self.function, self.args, self.cancelled = function, args, False

    def active(self):
        return not self.cancelled

    def cancel(self):
        self.cancelled = True

    def run(self):
        if not self.cancelled:
            self.function(*self.args)


class CountingTracker(Tracker):
    """A tracker that refuses to build its whole table (the old O(n) a row)."""

    def lockouts(self):
        raise AssertionError("LockoutSync must look up one key, not build the table")


def make_sync(case, rows=()):
    clock = Clock()
    clock.advance(1000)
    tracker = CountingTracker(clock, Policy(scope="source"))
    store = TableStore(rows)
    sync = fleet.LockoutSync(clock, store, None, tracker, WallTime(clock, clock.seconds),
                             MemoryAudit())
    return clock, tracker, store, sync


class LockoutSyncTests(SynchronousTestCase):

    def test_big_read_applied_in_bounded_chunks(self):
        """
        20,000 rows: read in pages, applied at most APPLY_CHUNK a reactor
        turn (the reactor serves hits in between), all applied in the end.
        """
        rows = [(seq, f"198.51.{seq // 250}.{seq % 250}", 2000.0, 0)
                for seq in range(1, 20_001)]
        clock, tracker, store, sync = make_sync(self, rows)
        applied = []
        original = tracker.shared_lockout

        def counting(key, until, step=0):
            applied[-1] += 1
            original(key, until, step)

        tracker.shared_lockout = counting
        turns = TurnByTurn()
        sync._reactor = turns
        read = store.read_lockouts

        def from_a_thread(*args):
            # The answer comes from the pool: at a turn of its own.
            d = Deferred()
            turns.callLater(0, lambda: read(*args).chainDeferred(d))
            return d

        store.read_lockouts = from_a_thread
        applied.append(0)
        sync.read_all()
        while turns.calls:
            applied.append(0)
            turns.next_turn()
        self.assertLessEqual(max(applied), fleet.APPLY_CHUNK)
        self.assertEqual(sum(applied), 20_000)
        self.assertGreaterEqual(len(applied), 20_000 // fleet.APPLY_CHUNK)
        self.assertEqual(len(tracker._sources), 20_000)
        self.assertEqual([after for after, _, _ in store.reads],
                         [0, 5000, 10000, 15000, 20000], "pages, then an empty one")

    def test_a_row_from_a_fast_clock_is_cut_once_not_renewed_at_every_read(self):
        """
        A gateway a day fast wrote a source's lockout a day ahead (the
        database keeps the later end, so it stays): this gateway holds it
        for lockout-max from when it first read it, not a fresh lockout-max
        at each of the full reads that come every minute.
        """
        clock, tracker, store, sync = make_sync(self)
        ahead = clock.seconds() + 86400
        store.rows.append((1, "192.0.2.1", ahead, 0))
        sync.read_all(full=True)
        first_end = tracker.source_until("192.0.2.1")[0]
        self.assertEqual(first_end, clock.seconds() + 3600, "cut to lockout-max")
        for _ in range(70):  # 70 minutes of full reads
            clock.advance(60)
            sync.read_all(full=True)
        self.assertEqual(tracker.source_until("192.0.2.1")[0], first_end)
        self.assertIsNone(tracker.refusal("192.0.2.1"), "over after lockout-max")
        store.rows.append((2, "192.0.2.1", clock.seconds() + 30, 1))  # a new one, elsewhere
        sync.read_all()
        self.assertEqual(tracker.refusal("192.0.2.1").kind, "locked")

    def test_a_lifted_lockout_set_again_is_a_lockout_again(self):
        """
        Another gateway lifted it, then the same row came back (a save
        that committed after the lift): held again, cut row or not.
        """
        for ahead in (600, 86400):
            clock, tracker, store, sync = make_sync(self)
            tracker.lockouts = lambda tracker=tracker: Tracker.lockouts(tracker)  # lift lists
            row = (1, "192.0.2.1", clock.seconds() + ahead, 0)
            store.rows.append(row)
            sync.read_all()
            self.assertEqual(tracker.refusal("192.0.2.1").kind, "locked")
            sync.lifted("192.0.2.1")
            self.assertIsNone(tracker.refusal("192.0.2.1"))
            store.rows.append((2,) + row[1:])
            sync.read_all()
            self.assertEqual(tracker.refusal("192.0.2.1").kind, "locked", ahead)

    def test_only_changed_rows_read_again(self):
        clock, tracker, store, sync = make_sync(self, [(1, "192.0.2.1", 2000.0, 0)])
        sync.read_all()
        store.rows.append((7, "192.0.2.2", 2000.0, 0))
        sync.read_all()
        self.assertEqual(store.reads[-1][0], 1, "from the last seq read")
        self.assertEqual(tracker.source_until("192.0.2.2"), (2000.0, 0))
        sync.read_all(full=True)
        self.assertEqual(store.reads[-1][0], 0, "a full read starts again")
        self.assertIsNotNone(store.reads[-1][2], "and prunes the table first")

    def test_notice_during_a_read_reads_again(self):
        clock, tracker, store, sync = make_sync(self, [(1, "192.0.2.1", 2000.0, 0)])
        store.held = []
        sync.read_all()
        store.rows.append((2, "192.0.2.2", 2000.0, 0))
        sync._notified("reread")
        self.assertEqual(len(store.reads), 1, "one read at a time")
        d, page = store.held.pop(0)
        d.callback(page)
        self.assertEqual(len(store.reads), 2, "the notice is not lost")
        d, page = store.held.pop(0)
        d.callback(page)
        self.assertEqual(tracker.source_until("192.0.2.2"), (2000.0, 0))

    def test_failed_read_then_next_works(self):
        clock, tracker, store, sync = make_sync(self)
        store.read_lockouts = lambda *a: fail(StateError("gone"))
        sync.read_all()
        self.assertFalse(sync.available)
        del store.read_lockouts
        store.rows.append((1, "192.0.2.1", 2000.0, 0))
        sync.read_all()
        self.assertTrue(sync.available)
        self.assertEqual(tracker.source_until("192.0.2.1"), (2000.0, 0))

    def test_step_keeps_the_higher(self):
        """
        The escalation step another gateway reached is kept, and a lower
        one does not lower the local step.
        """
        clock, tracker, store, sync = make_sync(self)
        self.assertTrue(sync.apply("192.0.2.1", 1100.0, 3))
        self.assertEqual(tracker.source_until("192.0.2.1"), (1100.0, 3))
        self.assertTrue(sync.apply("192.0.2.1", 1200.0, 1), "later end")
        self.assertEqual(tracker.source_until("192.0.2.1"), (1200.0, 3))
        self.assertTrue(sync.apply("192.0.2.1", 1150.0, 5), "higher step, earlier end")
        self.assertEqual(tracker.source_until("192.0.2.1"), (1200.0, 5))
        self.assertFalse(sync.apply("192.0.2.1", 1200.0, 2))
        # Its next failure here escalates from the shared step.
        clock.advance(300)
        tracker.observer = _Observer()
        tracker.failed_attempt("192.0.2.1", "denied")
        self.assertEqual(tracker.observer.lockouts[0].step, 6)


class _Observer:
    def __init__(self):
        self.lockouts = []

    def lockout_started(self, lockout):
        self.lockouts.append(lockout)

    def knock_failed(self, slot, reason):
        pass


class SaveAgainTests(SynchronousTestCase):

    def test_failed_save_is_saved_again(self):
        """
        A batch of source lockouts whose save failed is not forgotten: its
        keys go back into the next batch, which is tried again.
        """
        h = Harness(self, lockout_scope="source")
        saved, failing = [], [True]

        def save(lockouts, steps=None):
            if failing[0]:
                return fail(StateError("the database is gone"))
            saved.append((dict(lockouts), dict(steps or {})))
            return succeed(None)

        h.server._store.save_lockouts = save
        h.server.tracker.failed_attempt("192.0.2.1", "denied")
        h.clock.advance(1)
        self.assertEqual(saved, [])
        failing[0] = False
        h.clock.advance(10)
        self.assertEqual(len(saved), 1)
        self.assertEqual(list(saved[0][0]), ["192.0.2.1"])
        self.assertEqual(saved[0][1], {"192.0.2.1": 0})


    def test_a_lift_the_state_has_not_answered_is_not_undone_by_the_next_batch(self):
        """
        A fleet's state answers a lift later: a batch of saves taken
        meanwhile must not hold the lifted source, or its row would come
        back and lock it again on every gateway.
        """
        h = Harness(self, lockout_scope="source")
        saved, lifting = [], Deferred()
        h.server._store.save_lockouts = lambda lockouts, steps=None: (
            saved.append(sorted(lockouts)) or succeed(None))
        h.server._store.lift_lockouts = lambda key=None: lifting
        h.server.tracker.failed_attempt("192.0.2.1", "denied")
        h.server.tracker.failed_attempt("192.0.2.2", "denied")
        lifted = h.server.lift("192.0.2.1")
        h.clock.advance(1)  # the batch a second
        self.assertEqual(saved, [["192.0.2.2"]])
        lifting.callback(None)
        self.assertEqual(self.successResultOf(lifted), ["192.0.2.1"])
        self.assertEqual(list(h.server.tracker.lockouts()), ["192.0.2.2"])


    def test_a_lift_the_state_refuses_leaves_the_lockout_to_be_saved(self):
        h = Harness(self, lockout_scope="source")
        saved = []
        h.server._store.save_lockouts = lambda lockouts, steps=None: (
            saved.append(sorted(lockouts)) or succeed(None))
        h.server._store.lift_lockouts = lambda key=None: fail(StateError("the database is gone"))
        h.server.tracker.failed_attempt("192.0.2.1", "denied")
        self.failureResultOf(h.server.lift("192.0.2.1"), StateError)
        h.clock.advance(1)
        self.assertEqual(saved, [["192.0.2.1"]], "still in force here: saved as ever")


class LiftAndRevokeNoticeTests(SynchronousTestCase):
    """
    The console's changes made on another gateway: a lift notice lifts
    here, a revocation notice (and every tick, since a notice can be
    missed) reads the revocations again.
    """

    def make(self):
        clock, _, store, sync = make_sync(self)
        # A lift reads the whole table (rare, by hand): a plain tracker.
        tracker = sync._tracker = Tracker(clock, Policy(scope="source"))
        revoked = {"alice": "id-1"}
        reads = []

        def read_revoked():
            reads.append(dict(revoked))
            return succeed(dict(revoked))

        store.read_revoked = read_revoked
        got = []
        sync._revoked = got.append
        return clock, tracker, sync, reads, got

    def lift(self, sync, key=None):
        """A lift as another gateway makes it: its row, then its notice."""
        store = sync._store
        store.lifts = store.lifts + [(len(store.lifts) + 1, key)]
        sync._notified("lift" if key is None else f"lift {key}")

    def test_lift_one_and_all(self):
        clock, tracker, sync, _, _ = self.make()
        sync.read_lifts()  # (at the start: where to begin)
        tracker.shared_lockout("192.0.2.1", 2000.0)
        tracker.shared_lockout("192.0.2.2", 2000.0)
        tracker.shared_lockout(GLOBAL, 2000.0)
        self.lift(sync, "192.0.2.1")
        self.assertEqual(sorted(tracker.lockouts()), [GLOBAL, "192.0.2.2"])
        self.lift(sync, GLOBAL)
        self.assertEqual(sorted(tracker.lockouts()), ["192.0.2.2"])
        self.lift(sync)
        self.assertEqual(tracker.lockouts(), {})

    def test_a_lockout_notice_is_read_from_the_table_not_taken(self):
        """
        Any role that may connect to the database can NOTIFY: a notice's
        text locks nobody out; the table is read, and holds nothing.
        """
        clock, tracker, sync, _, _ = self.make()
        store = sync._store
        sync._notified("1e300 *")
        sync._notified(f"{clock.seconds() + 600!r} 192.0.2.9")
        self.assertEqual(tracker.lockouts(), {})
        self.assertEqual(len(store.reads), 2, "each notice read the table")

    def test_a_lift_notice_without_its_row_lifts_nothing(self):
        clock, tracker, sync, _, _ = self.make()
        sync._store.lifts = [(1, None), (2, "192.0.2.1")]  # before this gateway began
        sync.read_lifts()
        tracker.shared_lockout("192.0.2.1", 2000.0)
        tracker.shared_lockout(GLOBAL, 2000.0)
        for notice in ("lift", "lift 192.0.2.1", "lift *"):
            sync._notified(notice)
        self.assertEqual(sorted(tracker.lockouts()), [GLOBAL, "192.0.2.1"])
        self.lift(sync)
        self.assertEqual(tracker.lockouts(), {})

    def test_a_lift_made_while_not_listening_is_read_at_the_next(self):
        """
        The notice was missed (reconnecting): the row is read when the
        listener is back, as it reads the lockouts and revocations again.
        """
        clock, tracker, sync, _, _ = self.make()
        sync.read_lifts()
        tracker.shared_lockout("192.0.2.1", 2000.0)
        sync._store.lifts = [(1, "192.0.2.1")]  # its notice lost
        self.assertEqual(list(tracker.lockouts()), ["192.0.2.1"])
        sync.read_lifts()  # (what the listener does on reconnecting)
        self.assertEqual(tracker.lockouts(), {})

    def test_the_store_hears_the_last_lift_taken(self):
        """
        What this gateway's lockout writes name (the database leaves out
        what a later lift covers): the seq of the last lift its tracker
        took, none before the first read.
        """
        clock, tracker, sync, _, _ = self.make()
        store = sync._store
        store.lifts = [(1, "192.0.2.7")]  # before this gateway began
        self.assertIsNone(getattr(store, "lifts_seen", None))
        sync.read_lifts()
        self.assertEqual(store.lifts_seen, 1)
        self.lift(sync, "192.0.2.1")
        self.assertEqual(store.lifts_seen, 2)
        # A lift whose notice this gateway missed, found by a lockout write:
        tracker.shared_lockout(GLOBAL, clock.seconds() + 600)
        store.lifts = store.lifts + [(3, None)]
        store.missed_lifts()
        self.assertEqual(store.lifts_seen, 3)
        self.assertEqual(tracker.lockouts(), {}, "lifted here too")

    def test_a_read_begun_before_a_lift_brings_nothing_back(self):
        """
        A page read before the lift committed arrives after it: dropped,
        and the table read again as the lift left it.
        """
        clock, tracker, sync, _, _ = self.make()
        sync.read_lifts()
        store = sync._store
        store.rows += [(1, GLOBAL, 2000.0, 0), (2, "192.0.2.1", 2000.0, 0)]
        store.held = []
        sync.read_all()
        del store.rows[:]  # the lift, committed
        self.lift(sync)
        d, page = store.held.pop(0)
        d.callback(page)  # the old rows
        self.assertEqual(tracker.lockouts(), {})
        self.assertEqual(len(store.held), 1, "read again")
        d, page = store.held.pop(0)
        d.callback(page)
        self.assertEqual(tracker.lockouts(), {})

    def test_revocations_read_on_notice_and_tick(self):
        clock, tracker, sync, reads, got = self.make()
        sync._notified("revoked")
        self.assertEqual(got, [{"alice": "id-1"}])
        sync._loop.start(sync._reread, now=False)
        self.addCleanup(sync._loop.stop)
        clock.advance(sync._reread)
        self.assertEqual(len(got), 2, "read again every tick")

    def test_failed_revocation_read_is_left_to_the_next(self):
        clock, tracker, sync, reads, got = self.make()
        sync._store.read_revoked = lambda: fail(StateError("gone"))
        sync.read_revoked()
        self.assertEqual(got, [])
        self.assertFalse(sync._reading_revoked)
        self.flushLoggedErrors()


class RevocationsReadTests(SynchronousTestCase):

    def test_revocations_read_are_added_never_dropped(self):
        h = Harness(self, clients=("alice", "bob"))
        alice = h.store.client("alice")
        self.assertTrue(h.server.revoke("alice"))
        h.server.revocations_read({"bob": h.store.client("bob").secret_id})
        h.server.revocations_read({})
        self.assertTrue(h.server.is_revoked(alice))
        self.assertTrue(h.server.is_revoked(h.store.client("bob")))
