"""
The life of an on-close action (docs/spec.md section 6): recorded in the
state, run when due, retried while it fails, run at once after a restart,
run at stop (close_now), and never before the open of its door finished.
"""

from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from knocker.daemon.actions import ActionResult
from knocker.daemon.audit import MemoryAudit
from knocker.daemon.clock import WallTime
from knocker.daemon.closes import CloseSchedule
from knocker.state.memory import MemoryStore

IP = "192.0.2.10"
RETRY = 60


def result(ok: bool) -> ActionResult:
    return ActionResult(
        argv=("/etc/knocker/nft-close", IP, "alice", "1"),
        exit_code=0 if ok else 1,
        signal=None,
        timed_out=False,
        stdout="",
        stderr="" if ok else "nft: no such table",
    )


class FakeCloser:
    """
    C{run_close}: records each run and answers with the next of C{outcomes}
    (the last one repeats).
    """

    def __init__(self, *outcomes: bool):
        self.outcomes = list(outcomes) or [True]
        self.runs: list[tuple] = []

    def __call__(self, ip, client, index):
        self.runs.append((ip, client, index))
        ok = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        return defer.succeed(result(ok))


class CloseScheduleTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.store = MemoryStore()
        self.audit = MemoryAudit()
        self.closer = FakeCloser(True)

    def schedule_of(self, closer=None):
        if closer is not None:
            self.closer = closer
        return CloseSchedule(self.clock, WallTime(self.clock), self.store, self.closer, self.audit, retry=RETRY)

    def test_result_helper(self):
        self.assertTrue(result(True).ok)
        self.assertFalse(result(False).ok)

    def test_record_stores_a_pending_close(self):
        closes = self.schedule_of()
        close_id = closes.record(1030.0, IP, "alice", 7)
        [pending] = self.store.pending_closes()
        self.assertEqual(pending.id, close_id)
        self.assertEqual(
            (pending.due, pending.ip, pending.client, pending.index), (1030.0, IP, "alice", 7)
        )
        self.assertEqual(self.closer.runs, [], "recording runs nothing")
        self.clock.advance(100)
        self.assertEqual(self.closer.runs, [], "nor does time, until it is scheduled")

    def test_runs_when_due_not_before(self):
        closes = self.schedule_of()
        close_id = closes.record(1030.0, IP, "alice", 7)
        closes.schedule(close_id, 1030.0, IP, "alice", 7)
        self.clock.advance(29.9)
        self.assertEqual(self.closer.runs, [])
        self.assertEqual(self.audit.of("close"), [])
        self.clock.advance(0.1)
        self.assertEqual(self.closer.runs, [(IP, "alice", 7)])

    def test_success_is_audited_and_forgotten(self):
        closes = self.schedule_of()
        close_id = closes.record(1030.0, IP, "alice", 7)
        closes.schedule(close_id, 1030.0, IP, "alice", 7)
        self.clock.advance(30)
        self.assertEqual(
            self.audit.of("close"),
            [{"event": "close", "ip": IP, "client": "alice", "index": 7, "ok": True}],
        )
        self.assertEqual(self.store.pending_closes(), [])
        self.clock.advance(10 * RETRY)
        self.assertEqual(len(self.closer.runs), 1, "a close that worked runs once")

    def test_failure_is_audited_kept_and_retried(self):
        closes = self.schedule_of(FakeCloser(False, False, True))
        close_id = closes.record(1030.0, IP, "alice", 7)
        closes.schedule(close_id, 1030.0, IP, "alice", 7)
        self.clock.advance(30)
        self.assertEqual(
            self.audit.of("close"),
            [{"event": "close", "ip": IP, "client": "alice", "index": 7, "ok": False}],
        )
        self.assertEqual([c.id for c in self.store.pending_closes()], [close_id])

        self.clock.advance(RETRY - 0.1)
        self.assertEqual(len(self.closer.runs), 1, "not retried before the retry delay")
        self.clock.advance(0.1)
        self.assertEqual(len(self.closer.runs), 2)
        self.assertEqual([c.id for c in self.store.pending_closes()], [close_id])

        self.clock.advance(RETRY)
        self.assertEqual(self.closer.runs, [(IP, "alice", 7)] * 3)
        self.assertEqual([e["ok"] for e in self.audit.of("close")], [False, False, True])
        self.assertEqual(self.store.pending_closes(), [], "forgotten once it worked")
        self.clock.advance(10 * RETRY)
        self.assertEqual(len(self.closer.runs), 3)

    def test_a_close_that_raises_is_kept_and_retried(self):
        """
        A run that raises (not a failed program: the code around it) is
        tried again like a failed close; before, it was logged and then
        neither retried nor forgotten, the door open until the next stop.
        """
        runs = []

        def run_close(ip, client, index):
            runs.append(index)
            if len(runs) == 1:
                raise RuntimeError("a listener of the audit log broke")
            return defer.succeed(result(True))

        closes = self.schedule_of(run_close)
        close_id = closes.record(1030.0, IP, "alice", 7)
        closes.schedule(close_id, 1030.0, IP, "alice", 7)
        self.clock.advance(30)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)
        self.assertEqual([c.id for c in self.store.pending_closes()], [close_id])
        self.clock.advance(RETRY)
        self.assertEqual(runs, [7, 7])
        self.assertEqual(self.store.pending_closes(), [], "forgotten once it worked")

    def test_default_retry_is_a_minute(self):
        closes = CloseSchedule(self.clock, WallTime(self.clock), self.store, FakeCloser(False, True), self.audit)
        close_id = closes.record(1000.0, IP, "alice", 1)
        closes.schedule(close_id, 1000.0, IP, "alice", 1)
        self.clock.advance(0)
        self.assertEqual(len(self.store.pending_closes()), 1)
        self.clock.advance(59)
        self.assertEqual(len(self.store.pending_closes()), 1)
        self.clock.advance(1)
        self.assertEqual(self.store.pending_closes(), [])

    def test_each_close_runs_for_its_own_knock(self):
        closes = self.schedule_of()
        first = closes.record(1010.0, IP, "alice", 1)
        second = closes.record(1020.0, "198.51.100.7", "bob", 4)
        closes.schedule(second, 1020.0, "198.51.100.7", "bob", 4)
        closes.schedule(first, 1010.0, IP, "alice", 1)
        self.clock.advance(10)
        self.assertEqual(self.closer.runs, [(IP, "alice", 1)])
        self.assertEqual([c.id for c in self.store.pending_closes()], [second])
        self.clock.advance(10)
        self.assertEqual(self.closer.runs, [(IP, "alice", 1), ("198.51.100.7", "bob", 4)])
        self.assertEqual(self.store.pending_closes(), [])

    def test_restore_runs_every_close_at_once(self):
        """
        After a restart every close the state holds runs at once, due or
        not: a door an earlier run opened is closed (fail-closed), and its
        client knocks again.
        """
        self.store.add_close(900.0, IP, "alice", 1)  # overdue
        self.store.add_close(1050.0, "198.51.100.7", "bob", 2)  # not yet due
        closes = self.schedule_of()
        self.assertEqual(closes.restore(), 2)
        self.assertEqual(self.closer.runs, [], "nothing runs inside restore()")
        self.clock.advance(0)
        self.assertEqual(self.closer.runs, [(IP, "alice", 1), ("198.51.100.7", "bob", 2)])
        self.assertEqual(self.store.pending_closes(), [])
        self.assertEqual([e["client"] for e in self.audit.of("close")], ["alice", "bob"])
        self.assertEqual(closes.open_doors(), [], "a restored close is no open door")

    def test_restore_of_nothing(self):
        self.assertEqual(self.schedule_of().restore(), 0)
        self.clock.advance(1000)
        self.assertEqual(self.closer.runs, [])

    def test_stop_cancels_but_keeps_the_closes(self):
        self.store.add_close(1040.0, IP, "bob", 3)
        closes = self.schedule_of()
        self.assertEqual(closes.restore(), 1)
        close_id = closes.record(1030.0, IP, "alice", 7)
        closes.schedule(close_id, 1030.0, IP, "alice", 7)
        self.assertEqual(len(self.clock.getDelayedCalls()), 2)
        closes.stop()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1000)
        self.assertEqual(self.closer.runs, [])
        self.assertEqual(self.audit.of("close"), [])
        self.assertEqual(len(self.store.pending_closes()), 2)

    def test_stop_cancels_a_retry(self):
        closes = self.schedule_of(FakeCloser(False))
        close_id = closes.record(1000.0, IP, "alice", 7)
        closes.schedule(close_id, 1000.0, IP, "alice", 7)
        self.clock.advance(0)
        self.assertEqual(len(self.closer.runs), 1)
        closes.stop()
        self.clock.advance(10 * RETRY)
        self.assertEqual(len(self.closer.runs), 1)
        self.assertEqual([c.id for c in self.store.pending_closes()], [close_id])

    def test_restored_after_stop_by_a_new_schedule(self):
        """
        What stop() leaves in the state, the next start's restore() runs.
        """
        closes = self.schedule_of()
        close_id = closes.record(1030.0, IP, "alice", 7)
        closes.schedule(close_id, 1030.0, IP, "alice", 7)
        closes.stop()
        again = self.schedule_of()
        self.assertEqual(again.restore(), 1)
        self.clock.advance(30)
        self.assertEqual(self.closer.runs, [(IP, "alice", 7)])
        self.assertEqual(self.store.pending_closes(), [])


class StopTests(SynchronousTestCase):
    """
    After stop() nothing runs again in this process, whatever was in flight.
    """

    def setUp(self):
        self.clock = Clock()
        self.store = MemoryStore()
        self.audit = MemoryAudit()

    def test_a_close_that_fails_after_stop_is_not_retried_here(self):
        pending = defer.Deferred()
        runs = []

        def run_close(ip, client, index):
            runs.append(ip)
            return pending

        closes = CloseSchedule(self.clock, WallTime(self.clock), self.store, run_close, self.audit, retry=RETRY)
        close_id = closes.record(0, IP, "alice", 1)
        closes.schedule(close_id, 0, IP, "alice", 1)
        self.clock.advance(0)
        closes.stop()
        pending.callback(result(False))
        self.clock.advance(RETRY * 3)
        self.assertEqual(runs, [IP], "no retry after stop")
        self.assertEqual([c.id for c in self.store.pending_closes()], [close_id],
                         "the close stays for the next start")

    def test_a_burst_of_closes_runs_a_few_at_a_time(self):
        """
        Thousands of closes due at once (a restart after a busy day) run
        ACTIONS_AT_ONCE at a time, every one of them in the end.
        """
        from knocker.daemon.closes import ACTIONS_AT_ONCE

        running = []

        def run_close(ip, client, index):
            d = defer.Deferred()
            running.append(d)
            return d

        closes = CloseSchedule(self.clock, WallTime(self.clock), self.store, run_close,
                               self.audit, retry=RETRY)
        for index in range(1, 1001):
            closes.record(0, IP, "alice", index)
        self.assertEqual(closes.restore(), 1000)
        self.clock.advance(0)
        done = 0
        while running:
            self.assertLessEqual(len(running), ACTIONS_AT_ONCE)
            running.pop(0).callback(result(True))
            done += 1
        self.assertEqual(done, 1000)
        self.assertEqual(self.store.pending_closes(), [])
        self.assertEqual(len(self.audit.of("close")), 1000)

    def test_scheduling_an_id_again_replaces_its_timer(self):
        closer = FakeCloser(True)
        closes = CloseSchedule(self.clock, WallTime(self.clock), self.store, closer, self.audit, retry=RETRY)
        close_id = closes.record(10, IP, "alice", 1)
        closes.schedule(close_id, 10, IP, "alice", 1)
        closes.schedule(close_id, 20, IP, "alice", 1)
        self.clock.advance(30)
        self.assertEqual(len(closer.runs), 1)


class SameAddressTests(SynchronousTestCase):
    """
    A door is an address: a second knock from it while the door is open
    keeps the door open until the second knock's close, and every knock's
    close still runs (docs/spec.md section 6).
    """

    def setUp(self):
        CloseScheduleTests.setUp(self)  # the clock at 1000, a closer that works
        self.closes = CloseScheduleTests.schedule_of(self)

    def knock(self, index, ip=IP, duration=300.0, ok=True) -> int:
        """A knock whose on-success has finished now (C{ok}: it worked)."""
        due = self.clock.seconds() + duration
        close_id = self.closes.record(due + 10, ip, "alice", index)
        self.closes.opened(close_id, due, ip, "alice", index, ok=ok)
        return close_id

    def test_a_second_knock_keeps_the_door_open_to_its_own_time(self):
        self.knock(1)  # door open until 1300
        self.clock.advance(200)
        self.knock(2)  # and again, until 1500
        self.clock.advance(100)  # 1300: the first knock's time is up
        self.assertEqual(self.closer.runs, [], "the second knock holds the door")
        self.assertEqual(sorted(self.closes.open_doors()), [(IP, "alice", 1), (IP, "alice", 2)])
        self.assertEqual(len(self.store.pending_closes()), 2)
        self.clock.advance(199.9)
        self.assertEqual(self.closer.runs, [])
        self.clock.advance(0.1)  # 1500
        self.assertEqual(sorted(self.closer.runs), [(IP, "alice", 1), (IP, "alice", 2)],
                         "both closes run, at the later time")
        self.assertEqual(self.store.pending_closes(), [])
        self.assertEqual(self.closes.open_doors(), [])

    def test_a_third_knock_holds_it_longer_still(self):
        self.knock(1)
        self.clock.advance(200)
        self.knock(2)  # until 1500
        self.clock.advance(200)
        self.knock(3)  # until 1700
        self.clock.advance(299)  # 1699
        self.assertEqual(self.closer.runs, [])
        self.clock.advance(1)
        self.assertEqual(sorted(index for _, _, index in self.closer.runs), [1, 2, 3])

    def test_a_later_knock_whose_open_failed_holds_nothing(self):
        self.knock(1)
        self.clock.advance(200)
        self.knock(2, ok=False)
        self.clock.advance(100)
        self.assertEqual(self.closer.runs, [(IP, "alice", 1)], "closed at its own time")
        self.clock.advance(200)
        self.assertEqual(self.closer.runs, [(IP, "alice", 1), (IP, "alice", 2)])

    def test_another_address_holds_nothing(self):
        self.knock(1)
        self.clock.advance(200)
        self.knock(2, ip="198.51.100.7")
        self.clock.advance(100)
        self.assertEqual(self.closer.runs, [(IP, "alice", 1)])

    def test_an_earlier_knock_does_not_shorten_nor_hold_a_later_one(self):
        """
        A close falling due earlier than another door's runs; one falling
        due later is not moved earlier by anything.
        """
        self.knock(1, duration=500)  # until 1500
        self.clock.advance(100)
        self.knock(2, duration=100)  # until 1200: the first door outlasts it
        self.clock.advance(100)  # 1200
        self.assertEqual(self.closer.runs, [], "knock 2's close waits for knock 1's door")
        self.clock.advance(300)  # 1500
        self.assertEqual(sorted(index for _, _, index in self.closer.runs), [1, 2])

    def test_a_close_falling_due_while_a_knock_opens_the_door_again_waits_for_it(self):
        self.knock(1)
        self.clock.advance(299)
        second = self.closes.record(1610.0, IP, "alice", 2)  # on-success running
        self.clock.advance(1)  # 1300: knock 1's time is up
        self.assertEqual(self.closer.runs, [], "not while the door is being opened again")
        self.closes.opened(second, 1600.0, IP, "alice", 2, ok=True)
        self.assertEqual(self.closer.runs, [], "the door is open until 1600 now")
        self.clock.advance(300)
        self.assertEqual(sorted(index for _, _, index in self.closer.runs), [1, 2])

    def test_the_open_again_failing_lets_the_close_run_at_once(self):
        self.knock(1)
        self.clock.advance(299)
        second = self.closes.record(1610.0, IP, "alice", 2)
        self.clock.advance(1)
        self.closes.opened(second, 1600.0, IP, "alice", 2, ok=False)
        self.assertEqual(self.closer.runs, [(IP, "alice", 1)])

    def test_stop_runs_a_held_close_once(self):
        self.knock(1)
        self.clock.advance(200)
        self.knock(2)
        self.clock.advance(100)  # knock 1's close is held
        done = []
        self.closes.close_now().addCallback(done.append)
        self.assertEqual(done, [2])
        self.assertEqual(sorted(index for _, _, index in self.closer.runs), [1, 2])
        self.clock.advance(1000)
        self.assertEqual(len(self.closer.runs), 2, "nothing runs twice")

    def test_stop_while_a_close_waits_for_an_open(self):
        self.knock(1)
        self.clock.advance(299)
        second = self.closes.record(1610.0, IP, "alice", 2)
        self.clock.advance(1)  # knock 1's close waits for knock 2's on-success
        self.closes.close_now()
        self.assertEqual(self.closer.runs, [(IP, "alice", 1)],
                         "knock 2's close waits for its on-success, knock 1's does not")
        self.closes.opened(second, 1600.0, IP, "alice", 2, ok=True)
        self.assertEqual(sorted(index for _, _, index in self.closer.runs), [1, 2])
        self.clock.advance(1000)
        self.assertEqual(len(self.closer.runs), 2)


class HeldInOrderTests(SynchronousTestCase):
    """
    The actions of one address stay in order under a stepped wall clock,
    a queue of closes, a store that answers later, and an address that
    never stops knocking.
    """

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1000)
        self.offset = 0.0
        self.wall = WallTime(self.clock, wall=lambda: self.clock.seconds() + self.offset)
        self.store = MemoryStore()
        self.running: list[tuple[tuple, defer.Deferred]] = []
        self.ran: list[int] = []
        self.closes = CloseSchedule(self.clock, self.wall, self.store, self.close,
                                    MemoryAudit(), retry=RETRY)

    def close(self, ip, client, index):
        d = defer.Deferred()
        self.running.append(((ip, client, index), d))
        self.ran.append(index)
        return d

    def finish_all(self):
        while self.running:
            self.running.pop(0)[1].callback(result(True))

    def knock(self, index, ip=IP, duration=300.0) -> int:
        due = self.wall.now() + duration
        close_id = self.closes.record(due + 10, ip, "alice", index)
        self.closes.opened(close_id, due, ip, "alice", index, ok=True)
        return close_id

    def started(self) -> list[int]:
        return [index for (_, _, index), _ in self.running]

    def test_a_wall_clock_step_neither_stretches_nor_cuts_a_held_door(self):
        self.knock(1)  # until 1300
        self.clock.advance(200)
        self.knock(2)  # until 1500
        self.offset = -3600.0  # the wall clock stepped back an hour
        self.clock.advance(299.9)
        self.assertEqual(self.started(), [])
        self.clock.advance(0.1)  # 1500 on the monotonic clock
        self.assertEqual(sorted(self.started()), [1, 2])

    def test_a_queued_close_whose_address_opened_meanwhile_is_held(self):
        """
        Closes queue for ACTIONS_AT_ONCE; one whose turn comes after its
        address opened again is held to that door's time, not run.
        """
        from knocker.daemon.closes import ACTIONS_AT_ONCE

        for n in range(ACTIONS_AT_ONCE):
            self.knock(100 + n, ip=f"198.51.100.{n + 1}", duration=299)
        self.knock(1)  # falls due at 1300, behind the eight
        self.clock.advance(300)
        self.assertEqual(len(self.running), ACTIONS_AT_ONCE, "knock 1's close waits its turn")
        self.knock(2)  # its door opens again meanwhile, until 1600
        self.finish_all()
        self.assertNotIn(1, self.started(), "held, not run behind the open")
        self.clock.advance(300)
        self.assertEqual(sorted(self.started()), [1, 2])

    def test_an_open_waits_for_a_close_of_its_address_already_running(self):
        self.knock(1)
        self.clock.advance(300)
        self.assertEqual(self.started(), [1])
        running = self.closes.quiet(IP)
        self.assertIsNotNone(running, "a close of the address runs")
        self.assertIsNone(self.closes.quiet("198.51.100.7"), "none for another")
        self.assertNoResult(running)
        self.finish_all()
        self.successResultOf(running)
        self.assertIsNone(self.closes.quiet(IP))

    def test_a_knock_still_being_recorded_holds_the_door(self):
        """
        A fleet's store records a close later: from the record on, the
        address's door is being opened, and a close falling due waits.
        """
        class LaterStore(MemoryStore):
            def __init__(self):
                super().__init__()
                self.answers = []

            def add_close(self, due, ip, client, index):
                d = defer.Deferred()
                self.answers.append((d, super().add_close(due, ip, client, index)))
                return d

        store = LaterStore()
        closes = CloseSchedule(self.clock, self.wall, store, self.close, MemoryAudit())
        first = closes.record(1310.0, IP, "alice", 1)
        store.answers.pop(0)[0].callback(1)
        closes.opened(self.successResultOf(first), 1300.0, IP, "alice", 1, ok=True)
        self.clock.advance(299)
        second = closes.record(1610.0, IP, "alice", 2)  # the database has not answered
        self.clock.advance(1)
        self.assertEqual(self.started(), [], "held while the second knock is recorded")
        d, close_id = store.answers.pop(0)
        d.callback(close_id)
        closes.opened(self.successResultOf(second), 1600.0, IP, "alice", 2, ok=True)
        self.assertEqual(self.started(), [])
        self.clock.advance(300)
        self.assertEqual(sorted(self.started()), [1, 2])

    def test_a_knock_whose_record_failed_holds_nothing(self):
        class FailingStore(MemoryStore):
            fail = False

            def add_close(self, due, ip, client, index):
                if self.fail:
                    return defer.fail(OSError("the database is gone"))
                return super().add_close(due, ip, client, index)

        store = FailingStore()
        closes = CloseSchedule(self.clock, self.wall, store, self.close, MemoryAudit())
        closes.opened(closes.record(1310.0, IP, "alice", 1), 1300.0, IP, "alice", 1, ok=True)
        self.clock.advance(299)
        store.fail = True
        self.failureResultOf(closes.record(1610.0, IP, "alice", 2), OSError)
        self.clock.advance(1)
        self.assertEqual(self.started(), [1])

    def test_an_address_that_never_stops_knocking(self):
        """
        Knocking once a second with a 30 s door: every close is held while
        the knocks go on, each falls due once (one timer per open door, not
        one per held close), and all run once the knocking stops.
        """
        for index in range(1, 601):
            self.knock(index, duration=30)
            self.clock.advance(1)
            self.assertLessEqual(len(self.clock.getDelayedCalls()), 31)
        self.assertEqual(self.ran, [], "the door stayed open throughout")
        self.clock.advance(30)
        self.finish_all()  # eight at a time
        self.assertEqual(sorted(self.ran), list(range(1, 601)), "each close once")
        self.assertEqual(self.store.pending_closes(), [])
        self.assertEqual(self.clock.getDelayedCalls(), [])
