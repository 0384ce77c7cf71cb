"""
The flood accounting of the audit log (knocker.daemon.hitsummary): the
budget of hit lines, the per-(ip, port) summaries and their bound, the
flush timer; first through an AuditLog writing a real file, then the
HitSummary on its own.
"""

from twisted.internet.task import Clock
from twisted.trial.unittest import TestCase

from knocker.daemon import hitsummary
from knocker.daemon.hitsummary import (
    DRAIN_SLICE,
    LOW_SPACE_KEYS,
    OVERFLOW_SOURCES,
    SUMMARY_INTERVAL,
    SUMMARY_KEYS,
    HitSummary,
)
from tests.daemon.test_audit import hit_count, strict_lines


class BudgetTests(TestCase):
    """
    A flood of hits: at most audit-hit-rate hit lines a second, the rest
    counted in summaries, every hit accounted for.
    """

    def make(self, **keys):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        self.clock = Clock()
        self.clock.advance(1764028800.0)
        self.path = self.mktemp()
        keys.setdefault("min_free_mib", 0)
        self.audit = AuditLog(self.path, self.clock, **keys)
        return self.audit

    def events(self, kind=None):
        events = strict_lines(self.path)
        return events if kind is None else [e for e in events if e["event"] == kind]

    def test_hits_under_the_rate_are_all_lines(self):
        """
        50 hits a second for 10 s under a rate of 100: 500 hit lines, no
        summary, no timer.
        """
        audit = self.make(hit_rate=100)
        for i in range(500):
            audit.hit(f"192.0.2.{i % 7}", 40000 + i, 20000 + i % 3, "no-slot")
            self.clock.advance(0.02)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        audit.close()
        hits = self.events("hit")
        self.assertEqual(len(hits), 500)
        self.assertEqual([e["src_port"] for e in hits], [40000 + i for i in range(500)])
        self.assertEqual(self.events("hits"), [])

    def test_a_burst_is_cut_to_the_rate_and_every_hit_counted(self):
        """
        10,000 hits from 50 sources at one instant: at most 100 hit lines;
        the rest in one hits line per source and port, whose counts and
        outcomes add up exactly to what was not written one by one.
        """
        from collections import Counter

        audit = self.make(hit_rate=100)
        sent = Counter()
        for i in range(10_000):
            ip, port = f"198.51.100.{i % 50}", 20000 + (i // 50) % 4
            outcome = "no-slot" if i % 3 else "locked"
            audit.hit(ip, 1024 + i % 60000, port, outcome)
            sent[ip, port, outcome] += 1
        lines = self.events("hit")
        self.assertEqual(len(lines), 100)
        self.assertEqual(self.events("hits"), [], "summaries wait for the interval")
        self.clock.advance(10)
        summaries = self.events("hits")
        self.assertEqual(len(summaries), 200, "one line per (ip, port)")
        self.assertEqual(len({(e["ip"], e["port"]) for e in summaries}), 200)
        counted = Counter()
        for e in lines:
            counted[e["ip"], e["port"], e["outcome"]] += 1
        for e in summaries:
            self.assertEqual(e["count"], sum(e["outcomes"].values()))
            self.assertEqual(e["first"], "2025-11-25T00:00:00.000000Z")
            self.assertEqual(e["last"], "2025-11-25T00:00:00.000000Z")
            self.assertEqual(e["time"], "2025-11-25T00:00:10.000000Z")
            for outcome, n in e["outcomes"].items():
                counted[e["ip"], e["port"], outcome] += n
        self.assertEqual(counted, sent)
        self.assertEqual(sum(e["count"] for e in summaries), 10_000 - 100)
        audit.close()

    def test_the_budget_refills_at_the_rate(self):
        """
        After a burst has spent the budget, hit lines come back at the rate:
        100 more over the next second, not all at once.
        """
        audit = self.make(hit_rate=100)
        for _ in range(1000):
            audit.hit("192.0.2.1", 1, 20000, "no-slot")
        self.clock.advance(0.5)
        for _ in range(1000):
            audit.hit("192.0.2.1", 1, 20000, "no-slot")
        self.assertEqual(len(self.events("hit")), 150)
        audit.close()
        self.assertEqual(hit_count(self.events()), 2000)

    def test_a_clock_stepped_back_leaves_no_debt(self):
        audit = self.make(hit_rate=10)
        for _ in range(20):
            audit.hit("192.0.2.1", 1, 20000, "no-slot")
        self.clock.rightNow -= 3600
        for _ in range(20):
            audit.hit("192.0.2.1", 1, 20000, "no-slot")
        self.clock.advance(1)
        audit.hit("192.0.2.1", 1, 20000, "no-slot")
        audit.close()
        self.assertEqual(len(self.events("hit")), 11, "the budget refills after the step")
        self.assertEqual(hit_count(self.events()), 41)

    def test_summaries_flush_every_ten_seconds(self):
        """
        The flush timer starts with the first summarised hit, writes 10 s
        later, and is not running while nothing is pending.
        """
        audit = self.make(hit_rate=1)
        audit.hit("192.0.2.1", 1, 20000, "no-slot")
        self.assertEqual(self.clock.getDelayedCalls(), [], "no timer while hits fit the budget")
        audit.hit("192.0.2.1", 2, 20000, "no-slot")
        self.clock.advance(4)
        audit.hit("192.0.2.1", 3, 20000, "locked")   # spends the refilled token: a line
        audit.hit("192.0.2.1", 4, 20000, "locked")
        self.clock.advance(5.9)
        self.assertEqual(self.events("hits"), [])
        self.clock.advance(0.1)
        [summary] = self.events("hits")
        self.assertEqual((summary["count"], summary["outcomes"]),
                         (2, {"no-slot": 1, "locked": 1}))
        self.assertEqual((summary["first"], summary["last"]),
                         ("2025-11-25T00:00:00.000000Z", "2025-11-25T00:00:04.000000Z"))
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(100)
        audit.hit("192.0.2.9", 5, 20001, "no-slot")
        audit.hit("192.0.2.9", 6, 20001, "no-slot")
        self.clock.advance(10)
        self.assertEqual([(e["ip"], e["count"]) for e in self.events("hits")],
                         [("192.0.2.1", 2), ("192.0.2.9", 1)])
        audit.close()
        self.assertEqual(hit_count(self.events()), 6)

    def test_the_summary_table_is_bounded(self):
        """
        Past summary_keys keys in an interval, further keys go into one
        hits-overflow line (count, distinct sources); the table never
        grows past the bound, and the counts still add up.
        """
        audit = self.make(hit_rate=1, summary_keys=10)
        for i in range(1001):
            audit.hit(f"203.0.113.{i % 30}", 1, 20000 + i % 2, "no-slot")
            self.assertLessEqual(len(audit._hits), 10)
        self.clock.advance(10)
        self.assertEqual(len(self.events("hits")), 10)
        [overflow] = self.events("hits-overflow")
        self.assertEqual(overflow["sources"], 20, "30 addresses, 10 in the table")
        self.assertEqual(overflow["outcomes"], {"no-slot": overflow["count"]})
        self.assertNotIn("sources_capped", overflow)
        self.assertEqual(hit_count(self.events()), 1001)
        audit.close()

    def test_the_default_bound_is_ten_thousand_keys(self):
        from knocker.daemon import hitsummary as module

        self.assertEqual(module.SUMMARY_KEYS, 10_000)
        audit = self.make(hit_rate=1)
        for i in range(12_000):
            audit.hit(f"2001:db8::{i:x}", 1, 20000, "no-slot")
        self.assertEqual(len(audit._hits), 10_000)
        audit.close()
        self.assertEqual(len(self.events("hits")), 10_000)
        self.assertEqual(self.events("hits-overflow")[0]["count"], 12_000 - 1 - 10_000)
        self.assertEqual(hit_count(self.events()), 12_000)

    def test_times_come_from_the_wall_clock_the_flush_from_the_reactor(self):
        """
        A reactor on the monotonic clock (the daemon's): the lines carry
        the wall time given as C{wall}, and the flush still runs on the
        reactor's clock.
        """
        wall = [1764028800.0]
        audit = self.make(hit_rate=1, wall=lambda: wall[0])
        self.clock.rightNow = 35.0   # seconds since boot, say
        audit.hit("192.0.2.1", 1, 20000, "no-slot")
        audit.hit("192.0.2.1", 2, 20000, "no-slot")
        wall[0] += 10
        self.clock.advance(10)
        hit, hits = self.events()
        self.assertEqual(hit["time"], "2025-11-25T00:00:00.000000Z")
        self.assertEqual((hits["time"], hits["first"]),
                         ("2025-11-25T00:00:10.000000Z", "2025-11-25T00:00:00.000000Z"))
        audit.close()

    def test_close_flushes_what_is_pending(self):
        audit = self.make(hit_rate=1)
        for _ in range(5):
            audit.hit("192.0.2.1", 1, 20000, "no-slot")
        audit.record("stop")
        audit.close()
        self.assertEqual(self.clock.getDelayedCalls(), [], "the flush timer is cancelled")
        self.assertEqual([e["event"] for e in self.events()], ["hit", "stop", "hits"])
        self.assertEqual(hit_count(self.events()), 5)


class HitSummaryTests(TestCase):
    """
    The HitSummary alone: times given, lines handed to a write function.
    """

    def make(self, rate=10, keys=5):
        self.clock = Clock()
        self.due = []
        return HitSummary(self.clock, lambda: self.due.append(self.clock.seconds()), rate,
                          now=100.0, keys=keys)

    def test_the_budget_is_a_token_bucket(self):
        """
        A full second's worth at the start, then the rate, never more than
        a second's worth; a time stepped back gives no debt.
        """
        summary = self.make(rate=10)
        self.assertEqual(sum(summary.take(100.0) for _ in range(20)), 10)
        self.assertEqual(sum(summary.take(100.5) for _ in range(20)), 5)
        self.assertEqual(sum(summary.take(200.0) for _ in range(20)), 10, "capped at the burst")
        self.assertFalse(summary.take(50.0))
        self.assertEqual(sum(summary.take(50.5) for _ in range(20)), 5)

    def test_a_time_stepped_back_keeps_the_tokens_held(self):
        summary = self.make(rate=10)
        self.assertEqual(sum(summary.take(100.0) for _ in range(3)), 3)
        self.assertEqual(sum(summary.take(-3500.0) for _ in range(20)), 7)
        self.assertEqual(sum(summary.take(-3499.5) for _ in range(20)), 5)

    def test_the_table_is_bounded_and_the_overflow_counts_the_rest(self):
        summary = self.make(keys=2)
        self.assertFalse(summary.pending)
        self.assertEqual(self.clock.getDelayedCalls(), [], "no timer while nothing is counted")
        summary.add("192.0.2.1", 20000, "no-slot", 100.0)
        summary.add("192.0.2.1", 20000, "locked", 101.0)
        summary.add("192.0.2.2", 20000, "no-slot", 102.0)
        for i in range(5):
            summary.add(f"192.0.2.{10 + i % 3}", 20001, "locked", 103.0 + i)
        self.assertEqual(len(summary), 2)
        self.assertTrue(summary.pending)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "one timer for it all")
        self.clock.advance(SUMMARY_INTERVAL - 0.1)
        self.assertEqual(self.due, [])
        self.clock.advance(0.1)
        self.assertEqual(self.due, [SUMMARY_INTERVAL])
        lines = []
        summary.drain(lambda event, fields: lines.append((event, fields)) or True)
        self.assertEqual(lines, [
            ("hits", {"ip": "192.0.2.1", "port": 20000, "count": 2,
                      "first": "1970-01-01T00:01:40.000000Z",
                      "last": "1970-01-01T00:01:41.000000Z",
                      "outcomes": {"no-slot": 1, "locked": 1}}),
            ("hits", {"ip": "192.0.2.2", "port": 20000, "count": 1,
                      "first": "1970-01-01T00:01:42.000000Z",
                      "last": "1970-01-01T00:01:42.000000Z", "outcomes": {"no-slot": 1}}),
            ("hits-overflow", {"count": 5, "sources": 3,
                               "first": "1970-01-01T00:01:43.000000Z",
                               "last": "1970-01-01T00:01:47.000000Z",
                               "outcomes": {"locked": 5}}),
        ])
        self.assertFalse(summary.pending)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.assertEqual(summary.close(), 0)

    def test_overflow_sources_are_capped(self):
        summary = self.make(keys=0)
        for i in range(OVERFLOW_SOURCES + 5):
            summary.add(f"2001:db8::{i:x}", 20000, "no-slot", 100.0)
        lines = []
        summary.drain(lambda event, fields: lines.append((event, fields)) or True)
        [(event, fields)] = lines
        self.assertEqual((event, fields["count"], fields["sources"], fields["sources_capped"]),
                         ("hits-overflow", OVERFLOW_SOURCES + 5, OVERFLOW_SOURCES, True))

    def test_what_cannot_be_written_is_kept_for_the_next_interval(self):
        summary = self.make(keys=2)
        for ip in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
            summary.add(ip, 20000, "no-slot", 100.0)
        written = []

        def write(event, fields):
            if len(written) == 1:
                return False   # the disk fills after the first line
            written.append((event, fields.get("ip")))
            return True

        summary.drain(write)
        self.assertEqual(written, [("hits", "192.0.2.1")])
        self.assertEqual(len(summary), 1)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1, "scheduled again")
        self.clock.advance(SUMMARY_INTERVAL)
        self.assertEqual(len(self.due), 1)
        summary.add("192.0.2.4", 20000, "locked", 111.0)
        self.assertEqual(len(summary), 2, "room again for a new key")
        self.assertEqual(summary.close(), 3, "the kept line, the overflow, the new key")
        self.assertFalse(summary.pending)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_low_space_takes_the_budget_and_tightens_the_bound(self):
        summary = self.make(rate=10, keys=1000)
        summary.set_low(True)
        self.assertFalse(summary.take(100.0))
        self.assertFalse(summary.take(200.0), "no budget however long")
        for i in range(LOW_SPACE_KEYS + 10):
            summary.add(f"2001:db8::{i:x}", 20000, "no-slot", 200.0)
        self.assertEqual(len(summary), LOW_SPACE_KEYS)
        summary.set_low(False)
        self.assertEqual(sum(summary.take(200.0) for _ in range(20)), 10,
                         "the whole budget back at once")
        summary.add("192.0.2.1", 20000, "no-slot", 200.0)
        self.assertEqual(len(summary), LOW_SPACE_KEYS + 1)
        self.assertEqual(summary.close(), LOW_SPACE_KEYS + 11)


class TurnClock(Clock):
    """
    A Clock whose delayed calls can be run one at a time, each a turn of
    the reactor (C{advance} runs a chain of C{callLater(0)} all at once).
    """

    def turn(self) -> bool:
        """
        Run the earliest call that is due, if any; say whether one ran.
        """
        due = [call for call in self.calls if call.getTime() <= self.seconds()]
        if not due:
            return False
        call = min(due, key=lambda call: call.getTime())
        self.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)
        return True


def counted(lines) -> dict:
    """
    The hits the summary lines account for, per (ip, port) (the overflow
    under None).
    """
    from collections import Counter

    counts = Counter()
    for _event, fields in lines:
        counts[fields.get("ip"), fields.get("port")] += fields["count"]
    return counts


class SlicedDrainTests(TestCase):
    """
    A full table is 10,000 lines and more: written in one turn it would
    hold up the knocks, so it goes out a slice a turn, and no hit is lost
    or counted twice on the way.
    """

    def test_a_full_table_is_written_a_slice_a_turn(self):
        from collections import Counter

        clock = TurnClock()
        due = []
        summary = HitSummary(clock, lambda: due.append(True), 1, now=100.0)
        sent = Counter()
        for i in range(SUMMARY_KEYS + 500):
            ip = f"2001:db8::{i:x}"
            summary.add(ip, 20000, "no-slot", 100.0)
            sent[(ip, 20000) if i < SUMMARY_KEYS else (None, None)] += 1
        clock.rightNow += SUMMARY_INTERVAL
        self.assertTrue(clock.turn())
        self.assertEqual(due, [True])
        lines, per_turn = [], []

        def write(event, fields):
            lines.append((event, fields))
            return True

        summary.drain(write)
        per_turn.append(len(lines))
        # Hits keep coming between the turns: the next interval's.
        summary.add("2001:db8::1", 20000, "locked", 111.0)
        sent["2001:db8::1", 20000] += 1
        while clock.turn():
            per_turn.append(len(lines) - sum(per_turn))
        self.assertGreater(len(per_turn), 5)
        self.assertLessEqual(max(per_turn), DRAIN_SLICE)
        self.assertEqual(len(lines), SUMMARY_KEYS + 1, "every key, then the overflow")
        self.assertEqual(lines[-1][0], "hits-overflow")
        self.assertEqual(sum(per_turn), len(lines))
        self.assertTrue(summary.pending, "the next interval's hit, for its own flush")
        clock.advance(SUMMARY_INTERVAL)
        summary.drain(write)
        self.assertEqual(lines[-1], ("hits", {
            "ip": "2001:db8::1", "port": 20000, "count": 1,
            "first": "1970-01-01T00:01:51.000000Z", "last": "1970-01-01T00:01:51.000000Z",
            "outcomes": {"locked": 1}}))
        self.assertEqual(counted(lines), sent)
        self.assertFalse(summary.pending)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_a_write_failing_mid_drain_keeps_the_rest_once(self):
        """
        The disk fills between two slices while new hits are counted: what
        was not written goes back, merged with them within the table's
        bound, and the next flush writes each hit exactly once.
        """
        from collections import Counter

        self.patch(hitsummary, "DRAIN_SLICE", 3)
        clock = TurnClock()
        summary = HitSummary(clock, lambda: None, 1, now=100.0, keys=10)
        sent = Counter()
        for i in range(12):
            ip = f"192.0.2.{i}"
            for _ in range(i + 1):
                summary.add(ip, 20000, "no-slot", 100.0)
                sent[(ip, 20000) if i < 10 else (None, None)] += 1
        lines, full = [], []

        def write(event, fields):
            if full:
                return False
            lines.append((event, fields))
            return True

        summary.drain(write)
        self.assertEqual(len(lines), 3)
        # The next interval: a key still waiting to be written, and new ones
        # that fill the table, so some put back must go to the overflow.
        summary.add("192.0.2.9", 20000, "locked", 105.0)
        sent["192.0.2.9", 20000] += 1
        for i in range(8):
            summary.add(f"198.51.100.{i}", 20000, "locked", 105.0)
            sent[f"198.51.100.{i}", 20000] += 1
        full.append(True)
        self.assertTrue(clock.turn())
        self.assertEqual(len(lines), 3, "nothing more written")
        self.assertLessEqual(len(summary), 10, "the bound holds")
        self.assertFalse(clock.turn(), "no slice after a failure: the next interval")
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        full.clear()
        clock.advance(SUMMARY_INTERVAL)
        summary.drain(write)
        clock.advance(0)
        self.assertFalse(summary.pending)
        # The table held the new interval's 9 keys: 192.0.2.3 fitted, 4 to 8
        # went to the overflow, with the first interval's (10 and 11).
        [overflow] = [fields for event, fields in lines if event == "hits-overflow"]
        self.assertEqual((overflow["count"], overflow["sources"]),
                         (5 + 6 + 7 + 8 + 9 + 11 + 12, 7))
        written = counted(lines)
        self.assertEqual(sum(written.values()), sum(sent.values()), "every hit, once")
        self.assertEqual(written["192.0.2.9", 20000], 10 + 1, "one line, both intervals' hits")
        self.assertEqual(written["192.0.2.3", 20000], 4)

    def test_close_mid_drain_writes_everything_at_once(self):
        from knocker.daemon.audit import AuditLog
        from tests.daemon.test_audit import hit_count, strict_lines

        clock = TurnClock()
        clock.rightNow = 1764028800.0
        path = self.mktemp()
        audit = AuditLog(path, clock, hit_rate=1, min_free_mib=0)
        for i in range(SUMMARY_KEYS + 2000):
            audit.hit(f"2001:db8::{i:x}", 1, 20000, "no-slot")
        clock.rightNow += SUMMARY_INTERVAL
        self.assertTrue(clock.turn())
        self.assertEqual(len(strict_lines(path)), 1 + DRAIN_SLICE, "the hit line, a slice")
        audit.close()
        self.assertEqual(clock.getDelayedCalls(), [])
        events = strict_lines(path)
        self.assertEqual(len(events), 1 + SUMMARY_KEYS + 1)
        self.assertEqual(hit_count(events), SUMMARY_KEYS + 2000)
