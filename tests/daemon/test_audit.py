"""
The JSON-lines audit log (knocker.daemon.audit): hot-path hit lines, file
modes, torn lines, reopening, the free-space guard, a full disk.  The
budget and the summaries of hits are in test_hitsummary.py.
"""

import errno
import json
import os

from twisted.trial.unittest import TestCase

from knocker.daemon.audit import read_audit


class AuditLogTests(TestCase):
    def test_hit_lines_match_record_lines(self):
        """
        The hot-path hit line is the same JSON as the general one.
        """
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        clock = Clock()
        clock.advance(1764028800.25)
        path = self.mktemp()
        audit = AuditLog(path, clock)
        audit.hit("192.0.2.1", 40000, 20001, "no-slot")
        audit.record("hit", ip="192.0.2.1", src_port=40000, port=20001, outcome="no-slot")
        clock.advance(1)
        audit.hit("2001:db8::1", 1, 2, "locked")
        audit.close()
        first, second, third = read_audit(path)
        self.assertEqual(first, second)
        self.assertEqual(first["time"], "2025-11-25T00:00:00.250000Z")
        self.assertEqual(third["time"], "2025-11-25T00:00:01.250000Z")
        self.assertEqual(third["ip"], "2001:db8::1")
        self.assertEqual(oct(os.stat(path).st_mode & 0o777), "0o600")

    def test_torn_last_line_is_skipped(self):
        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write('{"event":"start"}\n{"event":"hit","ip":"1.2')
        self.assertEqual(read_audit(path), [{"event": "start"}])
        with open(path, "w") as handle:
            handle.write('{"event":"start"}\nnot json\n{"event":"stop"}\n')
        self.assertRaises(ValueError, read_audit, path)

    def test_reopen_that_fails_keeps_the_old_file(self):
        """
        Rotated into a directory that is gone: nothing is lost, the events
        keep going to the file already open.
        """
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        path = os.path.join(directory, "audit.log")
        audit = AuditLog(path, Clock())
        audit.record("start")
        moved = directory + ".moved"
        os.rename(directory, moved)
        self.assertFalse(audit.reopen())
        audit.record("stop")
        audit.close()
        self.assertEqual([e["event"] for e in read_audit(os.path.join(moved, "audit.log"))],
                         ["start", "stop"])
        self.assertFalse(os.path.exists(path))


class ProtocolErrorBudgetTests(TestCase):
    """
    Garbage on the central port is no failed attempt, so nothing locks its
    source out: its error lines are bounded like hit lines, and counted.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        self.clock = Clock()
        self.clock.advance(1764028800.0)
        self.path = self.mktemp()
        self.audit = AuditLog(self.path, self.clock, hit_rate=20, min_free_mib=0)

    def test_a_flood_of_errors_is_counted_not_written_line_by_line(self):
        written = [self.audit.protocol_error("203.0.113.9", "malformed") for _ in range(10_000)]
        self.audit.protocol_error("198.51.100.1", "handshake-timeout")
        self.audit.record("grant", ip="192.0.2.7", client="alice", index=3)
        self.assertEqual(written.count(True), 20, "the budget: a second's worth")
        self.clock.advance(10)
        self.audit.close()
        events = strict_lines(self.path)
        self.assertEqual(len(events), 20 + 1 + 2, "20 lines, the grant, two summaries")
        self.assertLess(os.path.getsize(self.path), 4096)
        self.assertIn({"event": "grant", "ip": "192.0.2.7", "client": "alice", "index": 3},
                      [{k: v for k, v in e.items() if k != "time"} for e in events])
        summaries = {e["ip"]: e for e in events if e["event"] == "errors"}
        self.assertEqual(summaries["203.0.113.9"]["count"], 10_000 - 20)
        self.assertEqual(summaries["203.0.113.9"]["outcomes"], {"malformed": 10_000 - 20})
        self.assertEqual(summaries["198.51.100.1"]["outcomes"], {"handshake-timeout": 1})
        lines = [e for e in events if e["event"] == "error"]
        self.assertEqual(len(lines) + summaries["203.0.113.9"]["count"]
                         + summaries["198.51.100.1"]["count"], 10_001, "every error counted")

    def flood_of(self, answer, event: str, reason: str, first: dict, size: int) -> None:
        """
        10,000 of C{answer()}: 20 lines (the first is C{first}), the rest
        counted in one summary under C{reason}, the file under C{size}.
        """
        written = [answer() for _ in range(10_000)]
        self.assertEqual(written.count(True), 20)
        self.clock.advance(10)
        self.audit.close()
        events = strict_lines(self.path)
        self.assertLess(os.path.getsize(self.path), size)
        lines = [e for e in events if e["event"] == event]
        self.assertEqual({k: v for k, v in lines[0].items() if k != "time"},
                         {"event": event, **first})
        [summary] = [e for e in events if e["event"] == "errors"]
        self.assertEqual(summary["outcomes"], {reason: 10_000 - 20})
        self.assertEqual(len(lines) + summary["count"], 10_000, "every answer counted")

    def test_a_locked_out_source_asking_again_and_again(self):
        """
        A locked-out source may connect and prove again without end, each
        time answered LOCKED: those lines share the errors' budget, and the
        rest are counted under the reason "locked".
        """
        self.flood_of(lambda: self.audit.locked(ip="203.0.113.9", client="alice",
                                                retry_after=60),
                      "locked", "locked",
                      {"ip": "203.0.113.9", "client": "alice", "retry_after": 60}, 4096)

    def test_proofs_the_state_could_not_answer_share_the_budget(self):
        """
        A database down answers every PROOF ERROR server-error, which
        locks nobody out: a flood of them is counted past the budget under
        the reason "state", its lines naming the client and the error.
        """
        self.flood_of(lambda: self.audit.server_error("state", ip="203.0.113.9",
                                                      client="nobody",
                                                      detail="database: no connection"),
                      "error", "state",
                      {"ip": "203.0.113.9", "client": "nobody",
                       "detail": "database: no connection", "reason": "state"}, 8192)

    def test_proofs_for_a_copy_the_server_cannot_read_share_the_budget(self):
        """
        A client whose server copy became unreadable is answered ERROR
        server-error before any proof is judged, so anyone naming it can
        ask again and again: counted past the budget under "client-file".
        """
        self.flood_of(lambda: self.audit.server_error("client-file", ip="203.0.113.9",
                                                      client="alice", detail="mode 0644"),
                      "error", "client-file",
                      {"ip": "203.0.113.9", "client": "alice", "detail": "mode 0644",
                       "reason": "client-file"}, 8192)

    def test_the_budget_refills(self):
        for _ in range(30):
            self.audit.protocol_error("203.0.113.9", "malformed")
        self.clock.advance(1)
        self.assertTrue(self.audit.protocol_error("203.0.113.9", "malformed"))
        self.audit.close()


class LockoutBudgetTests(TestCase):
    """
    Each fresh address of a flood (a new IPv6 /64 each time) can earn a
    lockout of its own: those lines are bounded like LOCKED answers, and
    counted; a lockout of the whole server always has its line.
    """

    def test_a_flood_of_source_lockouts_is_bounded_and_counted(self):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog
        from knocker.daemon.hitsummary import SUMMARY_KEYS

        clock = Clock()
        clock.advance(1764028800.0)
        path = self.mktemp()
        audit = AuditLog(path, clock, hit_rate=10, min_free_mib=0)
        own_line = []
        for n in range(20_000):  # over 2 s
            if n == 10_000:
                self.assertTrue(audit.lockout(ip="2001:db8:0:2710::1", source="*",
                                              scope="global", reason="wrong-port",
                                              seconds=60, step=0),
                                "the server's lockout is written, budget or not")
            own_line.append(audit.lockout(ip=f"2001:db8:0:{n:x}::1",
                                          source=f"2001:db8:0:{n:x}::/64", scope="source",
                                          reason="wrong-port", seconds=60, step=0))
            clock.advance(0.0001)
        audit.close()
        events = strict_lines(path)
        self.assertLessEqual(len(events), 10 + 2 * 10 + 1 + SUMMARY_KEYS + 1,
                             "a second's worth, the rate for 2 s, the server's, the summaries")
        lines = [e for e in events if e["event"] == "lockout"]
        [server] = [e for e in lines if e["source"] == "*"]
        self.assertEqual((server["scope"], server["ip"]), ("global", "2001:db8:0:2710::1"))
        self.assertEqual(len(lines) - 1, own_line.count(True))
        counted = sum(e["outcomes"].get("lockout", 0)
                      for e in events if e["event"] in ("errors", "errors-overflow"))
        self.assertEqual(len(lines) - 1 + counted, 20_000, "every source lockout accounted for")

    def test_memory_audit_keeps_every_lockout(self):
        from knocker.daemon.audit import MemoryAudit

        audit = MemoryAudit()
        self.assertTrue(audit.lockout(ip="192.0.2.1", source="192.0.2.1", scope="source",
                                      reason="timeout", seconds=60, step=0))
        self.assertEqual(audit.of("lockout"), [{"event": "lockout", "ip": "192.0.2.1",
                                                "source": "192.0.2.1", "scope": "source",
                                                "reason": "timeout", "seconds": 60, "step": 0}])


class UnauthenticatedRefusalBudgetTests(TestCase):
    """
    A DENIED, and an enrolment refused before any try, can be asked for
    without end where lockouts do not hold (here C{lockout = 0}): their
    lines share the protocol errors' budget, and every one is counted.
    """

    def flooded(self, send):
        """
        A harness whose audit log is a real one (5 lines a second), with
        C{send(harness, n)} done 300 times; the log's events, read back.
        """
        from knocker.daemon.audit import AuditLog
        from tests.helpers.harness import Harness

        h = Harness(self, lockout=0)
        path = os.path.join(h.dir, "audit.log")
        h.server._audit = audit = AuditLog(path, h.clock, hit_rate=5, min_free_mib=0)
        for n in range(300):
            send(h, n)
        audit.close()
        return strict_lines(path)

    def assertAllCounted(self, events, event, reason, wanted=300):
        lines = [e for e in events if e["event"] == event]
        counted = sum(e["outcomes"].get(reason, 0)
                      for e in events if e["event"] in ("errors", "errors-overflow"))
        self.assertLess(len(lines), 60, "past the budget, not a line each")
        self.assertEqual(len(lines) + counted, wanted, "every one accounted for")
        return lines

    def test_a_flood_of_denials_is_bounded_and_counted(self):
        from knocker.console.report import summarise

        def deny(h, n):
            line, proto, _, _ = h.handshake(secret=b"\x01" * 32, ip="198.51.100.7")
            self.assertEqual(line, b"DENIED\n")
            proto.connectionLost(None)

        events = self.flooded(deny)
        lines = self.assertAllCounted(events, "denied", "denied")
        self.assertEqual({(e["client"], e["reason"]) for e in lines}, {("alice", "bad-proof")})
        self.assertEqual(summarise(events).totals().denials, 300)

    def test_a_flood_of_refused_enrolments_is_bounded_and_counted(self):
        from knocker.enrol import keys as k

        message = k.b64(bytes(33)).encode("ascii")

        def refused(h, n):
            proto, transport = h.connect(ip="198.51.100.8")
            proto.dataReceived(b"KNOCKER/1 ENROLL 4242 " + message + b"\n")
            self.assertEqual(transport.value(), b"REFUSED unknown\n")
            proto.connectionLost(None)
            h.clock.advance(0.02)

        events = self.flooded(refused)
        lines = self.assertAllCounted(events, "enrol", "enrol-refused")
        self.assertEqual({e["outcome"] for e in lines}, {"unknown"})


class TornAuditTests(TestCase):
    def test_reopening_after_a_torn_line_keeps_every_line_json(self):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        path = self.mktemp()
        with open(path, "w") as handle:
            handle.write('{"event":"start"}\n{"event":"hit","ip":"19')
        audit = AuditLog(path, Clock())
        audit.record("start")
        audit.close()
        events = read_audit(path)
        self.assertEqual([e["event"] for e in events], ["start", "audit-repaired", "start"])
        self.assertEqual(events[1]["fragment"], '{"event":"hit","ip":"19')
        with open(path) as handle:
            for line in handle:
                json.loads(line)

    def test_a_tail_of_zeros_is_cut_back_to_the_last_whole_line(self):
        """
        A power loss can leave a run of zeros and no newline at the end of
        the file: all of it goes, every line left is JSON, and a bounded
        piece of it is kept as evidence.
        """
        from twisted.internet.task import Clock

        from knocker.daemon.audit import FRAGMENT_KEPT, AuditLog

        path = self.mktemp()
        with open(path, "wb") as handle:
            handle.write(b'{"event":"start"}\n{"event":"stop"}\n' + b"\0" * 200_000)
        audit = AuditLog(path, Clock(), min_free_mib=0)
        audit.record("start")
        audit.close()
        events = read_audit(path)
        self.assertEqual(strict_lines(path), events)
        self.assertEqual([e["event"] for e in events], ["start", "stop", "audit-repaired", "start"])
        self.assertEqual(events[2]["fragment"], "\0" * FRAGMENT_KEPT)
        self.assertEqual(events[2]["fragment_bytes"], 200_000)
        self.assertLess(os.path.getsize(path), 64 * 1024)


def strict_lines(path: str) -> list[dict]:
    """
    Every line of C{path}, the last one included, a whole JSON object (no
    torn line anywhere, none forgiven at the end).
    """
    with open(path, "rb") as handle:
        data = handle.read()
    if data and not data.endswith(b"\n"):
        raise AssertionError(f"{path} ends in a fragment: {data[-80:]!r}")
    return [json.loads(line) for line in data.split(b"\n") if line]


class FakeStatvfs:
    """
    A stand-in for C{os.statvfs}: C{free} bytes available; counts calls.
    """

    def __init__(self, free_mib: int):
        self.free = free_mib * 1024 * 1024
        self.calls = 0

    def __call__(self, path):
        from types import SimpleNamespace

        self.calls += 1
        return SimpleNamespace(f_bavail=self.free // 4096, f_frsize=4096)


def hit_count(events: list[dict]) -> int:
    """
    The hits an audit log accounts for: hit lines, and the counts of the
    summaries.
    """
    return sum(1 if e["event"] == "hit" else e["count"]
               for e in events if e["event"] in ("hit", "hits", "hits-overflow"))


class LowSpaceTests(TestCase):
    """
    Under audit-min-free MiB free on the log's filesystem: no hit lines,
    only (bounded) summaries; every other event is still written.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        self.clock = Clock()
        self.clock.advance(1764028800.0)
        self.path = self.mktemp()
        self.statvfs = FakeStatvfs(free_mib=50)
        self.audit = AuditLog(self.path, self.clock, hit_rate=100, min_free_mib=100,
                              statvfs=self.statvfs)

    def test_low_space_keeps_grants_and_drops_hit_lines(self):
        audit = self.audit
        for i in range(1000):
            audit.hit("192.0.2.1", 40000 + i, 20000, "no-slot")
        self.assertEqual(self.statvfs.calls, 1, "statvfs at most once a second")
        audit.record("grant", ip="192.0.2.7", client="alice", index=3)
        self.clock.advance(0.5)
        audit.hit("192.0.2.1", 1, 20000, "no-slot")
        self.assertEqual(self.statvfs.calls, 1)
        events = strict_lines(self.path)
        self.assertEqual([e["event"] for e in events], ["audit-low-space", "grant"])
        self.assertEqual((events[0]["free_mib"], events[0]["min_free_mib"]), (50, 100))
        self.clock.advance(9.5)
        self.assertEqual([(e["event"], e.get("count")) for e in strict_lines(self.path)[2:]],
                         [("hits", 1001)])

        self.statvfs.free = 500 * 1024 * 1024
        self.clock.advance(1)
        audit.hit("192.0.2.1", 2, 20000, "no-slot")
        audit.hit("192.0.2.1", 3, 20000, "no-slot")
        audit.close()
        self.assertEqual([e["event"] for e in strict_lines(self.path)[3:]],
                         ["audit-space-ok", "hit", "hit"])
        self.assertEqual(self.statvfs.calls, 3, "at 0 s, at the flush (10 s), at 11 s")
        self.assertEqual(hit_count(strict_lines(self.path)), 1003)

    def test_entering_and_leaving_are_logged_once(self):
        for _second in range(5):
            for _ in range(10):
                self.audit.hit("192.0.2.1", 1, 20000, "no-slot")
            self.clock.advance(1)
        self.statvfs.free = 200 * 1024 * 1024
        for _second in range(5):
            for _ in range(10):
                self.audit.hit("192.0.2.1", 1, 20000, "no-slot")
            self.clock.advance(1)
        self.audit.close()
        events = [e["event"] for e in strict_lines(self.path)]
        self.assertEqual(events.count("audit-low-space"), 1)
        self.assertEqual(events.count("audit-space-ok"), 1)
        self.assertEqual(events.count("hit"), 50)
        self.assertLessEqual(self.statvfs.calls, 11)
        self.assertEqual(hit_count(strict_lines(self.path)), 100)

    def test_low_space_summaries_are_bounded_tighter(self):
        from knocker.daemon.hitsummary import LOW_SPACE_KEYS

        for i in range(5000):
            self.audit.hit(f"2001:db8::{i:x}", 1, 20000, "no-slot")
        self.audit.close()
        events = strict_lines(self.path)
        self.assertEqual(len([e for e in events if e["event"] == "hits"]), LOW_SPACE_KEYS)
        [overflow] = [e for e in events if e["event"] == "hits-overflow"]
        self.assertEqual(overflow["count"], 5000 - LOW_SPACE_KEYS)
        self.assertEqual(hit_count(events), 5000)

    def test_no_check_with_min_free_zero(self):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        statvfs = FakeStatvfs(free_mib=0)
        path = self.mktemp()
        audit = AuditLog(path, Clock(), min_free_mib=0, statvfs=statvfs)
        audit.hit("192.0.2.1", 1, 20000, "no-slot")
        audit.close()
        self.assertEqual(statvfs.calls, 0)
        self.assertEqual([e["event"] for e in strict_lines(path)], ["hit"])


class FullDiskTests(TestCase):
    """
    A full filesystem, simulated at os.write for the audit log's descriptor
    only: a short write (part of the line written) or ENOSPC.  Every line
    must be whole or absent, and events after the space returns must land.
    """

    def setUp(self):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        self.clock = Clock()
        self.clock.advance(1764028800.0)
        self.path = self.mktemp()
        self.audit = AuditLog(self.path, self.clock, hit_rate=100, min_free_mib=0)
        self.full = None   # None: writes go through; "short" or "enospc"
        real_write = os.write
        fd = self.audit._fd

        def write(target, data):
            if target != fd or self.full is None:
                return real_write(target, data)
            if self.full == "short":   # the last bytes free: a part, then nothing
                self.full = "enospc"
                return real_write(target, bytes(data)[: max(1, len(data) // 3)])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        self.patch(os, "write", write)

    def test_a_short_write_leaves_no_torn_line(self):
        """
        The probe's case: a line written in part while the disk is full;
        when space returns, the next event must not be glued to the
        fragment.
        """
        audit = self.audit
        audit.record("start")
        self.full = "short"
        audit.record("grant", ip="192.0.2.1", client="alice", index=1)
        audit.hit("192.0.2.1", 40000, 20001, "progress")
        audit.record("open", ip="192.0.2.1", client="alice", index=1)
        strict_lines(self.path)
        self.full = None
        self.clock.advance(1)
        audit.record("grant", ip="192.0.2.1", client="alice", index=2)
        audit.hit("192.0.2.1", 40001, 20001, "progress")
        audit.close()
        events = strict_lines(self.path)
        self.assertEqual(read_audit(self.path), events)
        self.assertEqual([e["event"] for e in events], ["start", "grant", "hit", "hits"])
        self.assertEqual(events[1]["index"], 2)
        self.assertEqual(audit.dropped, 2, "the grant and the open were lost, and counted")
        self.assertEqual(hit_count(events), 2, "the hit that failed is in the summary")

    def test_a_restart_after_a_short_write_finds_a_clean_file(self):
        from knocker.daemon.audit import AuditLog

        self.audit.record("start")
        self.full = "short"
        self.audit.record("grant", ip="192.0.2.1", client="alice", index=1)
        self.full = None
        self.audit.close()
        audit = AuditLog(self.path, self.clock, min_free_mib=0)
        audit.record("start")
        audit.close()
        self.assertEqual([e["event"] for e in strict_lines(self.path)], ["start", "start"],
                         "nothing to repair: the fragment was cut at once")

    def test_enospc_loses_no_hit_count(self):
        """
        Writes refused outright (ENOSPC): hits are kept in the summary table
        (and the summaries too, while their writes fail), and written once
        space returns.
        """
        audit = self.audit
        self.full = "enospc"
        for i in range(30):
            audit.hit(f"192.0.2.{i % 3}", 40000 + i, 20001, "no-slot")
        self.clock.advance(10)   # the flush fails: kept for the next one
        audit.record("lockout", ip="192.0.2.1")
        self.assertEqual(strict_lines(self.path), [])
        self.full = None
        self.clock.advance(10)
        audit.hit("192.0.2.1", 1, 20001, "no-slot")
        audit.close()
        events = strict_lines(self.path)
        self.assertEqual([e["event"] for e in events], ["hits", "hits", "hits", "hit"])
        self.assertEqual(hit_count(events), 31)
        self.assertEqual(audit.dropped, 1, "the lockout event")

    def test_a_torn_line_that_cannot_be_cut_is_completed(self):
        """
        If even ftruncate fails, the rest of the torn line is written before
        the next event: the line is whole, not glued to the next.
        """
        def refuse(fd, size):
            raise OSError(errno.EIO, "no truncating here")

        self.patch(os, "ftruncate", refuse)
        audit = self.audit
        audit.record("start")
        self.full = "short"
        audit.record("grant", ip="192.0.2.1", client="alice", index=1)
        with open(self.path, "rb") as handle:
            self.assertFalse(handle.read().endswith(b"\n"), "a fragment is there, for now")
        audit.record("open", ip="192.0.2.1", client="alice", index=1)   # cannot even start
        self.full = None
        audit.record("grant", ip="192.0.2.1", client="alice", index=2)
        audit.close()
        events = strict_lines(self.path)
        self.assertEqual([(e["event"], e.get("index")) for e in events],
                         [("start", None), ("grant", 1), ("grant", 2)])

    def test_a_line_completed_later_is_not_counted_as_lost(self):
        """
        A torn line whose rest is kept (the cut failed) is in the file once
        the rest goes through: its event is not counted as dropped, and a
        hit is not counted a second time in a summary.
        """
        def refuse(fd, size):
            raise OSError(errno.EIO, "no truncating here")

        self.patch(os, "ftruncate", refuse)
        audit = self.audit
        self.full = "short"
        audit.record("grant", ip="192.0.2.1", client="alice", index=1)
        self.full = None
        audit.record("open", ip="192.0.2.1", client="alice", index=1)
        self.clock.advance(1)
        self.full = "short"
        audit.hit("192.0.2.1", 40000, 20001, "progress")
        self.full = None
        audit.record("stop")
        audit.close()
        events = strict_lines(self.path)
        self.assertEqual([e["event"] for e in events], ["grant", "open", "hit", "stop"])
        self.assertEqual(hit_count(events), 1)
        self.assertEqual(audit.dropped, 0)


class SighupTests(TestCase):
    def test_a_failed_reopen_is_not_logged_as_reopened(self):
        """
        SIGHUP after logrotate: when the path cannot be opened, the daemon
        log says so and does not also claim "reopened".
        """
        from twisted.logger import capturedLogs

        from knocker.daemon.service import KnockServerService

        class FailingAudit:
            path = "/nonexistent/audit.log"

            def reopen(self):
                return False

        service = KnockServerService(None, None)
        service._audit = FailingAudit()
        with capturedLogs() as events:
            service.reopen_logs()
        self.assertEqual([e for e in events if "reopened" in e.get("log_format", "")], [])

