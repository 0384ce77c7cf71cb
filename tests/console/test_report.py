"""
The report's figures (docs/spec.md section 12), shared by the reports page
and `knocker report`: what an operator checks against the audit log.
"""

import gzip
import json
import os

from twisted.trial.unittest import SynchronousTestCase

from knocker.console.auditfiles import audit_files, audit_lines
from knocker.console.auditquery import MAX_PAGE, query
from knocker.console.formats import FORMATS, as_csv
from knocker.console.report import MAX_DURATION, parse_duration, run_out, summarise


def line(time, event, **fields):
    return json.dumps({"time": time, "event": event, **fields}).encode() + b"\n"


DAY = [
    line("2027-01-15T08:00:01.000000Z", "grant", ip="192.0.2.1", client="alice", index=1),
    line("2027-01-15T08:00:02.000000Z", "open", ip="192.0.2.1", client="alice", index=1),
    line("2027-01-15T08:10:00.000000Z", "hit", ip="198.51.100.9", port=1, outcome="no-slot"),
    line("2027-01-15T08:10:01.000000Z", "lockout", ip="198.51.100.9", source="198.51.100.9",
         scope="source", reason="no-slot"),
    line("2027-01-15T09:00:00.000000Z", "denied", ip="203.0.113.5", client="eve",
         reason="unknown-client"),
    line("2027-01-15T09:30:00.000000Z", "fail", ip="192.0.2.1", client="alice",
         reason="timeout"),
    line("2027-01-16T10:00:00.000000Z", "hits", ip="198.51.100.9", port=1, count=500),
    line("2027-01-16T10:00:10.000000Z", "hits-overflow", count=1000, sources=300),
    b'{"time":"2027-01-16T10:00:11',  # torn by a crash
]


#: Lines the daemon never writes: a control character, a newline and a
#: lone surrogate in their strings (json.dumps writes them as \\u escapes).
UNSHOWABLE = [
    line("2027-01-15T08:00:03.000000Z", "fail", ip="192.0.2.1", client="alice",
         reason="x\x01y"),
    line("2027-01-15T08:00:04.000000Z", "denied", ip="192.0.2.2", client="ev\ne",
         reason="unknown-client"),
    line("2027-01-15T08:00:05.000000Z", "fail", ip="192.0.2.3", client="bob",
         reason="bad\ud800"),
]


class UnshowableTests(SynchronousTestCase):
    """
    A damaged or foreign line with characters no page, CSV or terminal can
    show is counted, and shown escaped, in every format and in a query.
    """

    def test_every_format_shows_them_escaped(self):
        report = summarise(DAY + UNSHOWABLE)
        self.assertEqual(report.totals().failures, 3)
        for name, write in FORMATS.items():
            text = write(report)
            text.encode("utf-8")  # no lone surrogate left
            shown = {"text": ("x\\u0001y", "bad\\ud800", "ev\\u000ae"),
                     "html": ("x\\u0001y", "bad\\ud800", "ev\\u000ae"),
                     "csv": ("x\\u0001y", "bad\\ud800"),  # rows only: no top clients
                     "json": ("x\\\\u0001y", "bad\\\\ud800", "ev\\\\u000ae")}[name]
            for escaped in shown:
                self.assertIn(escaped, text, (name, escaped))
            self.assertNotIn("ev\ne", text, name)

    def test_raw_bytes_and_deep_nesting(self):
        """
        Unescaped in the line: a surrogate in UTF-8 (json.loads takes it),
        DEL, a C1 control (U+009B begins a terminal's escape sequence).
        And a line nested too deep to walk is skipped, not an error.
        """
        raw = [
            b'{"time":"2027-01-15T08:00:03.000000Z","event":"fail","ip":"192.0.2.1",'
            b'"client":"alice","reason":"a\xed\xa0\x80b"}\n',
            b'{"time":"2027-01-15T08:00:04.000000Z","event":"fail","ip":"192.0.2.1",'
            b'"client":"alice","reason":"c\x7fd"}\n',
            b'{"time":"2027-01-15T08:00:05.000000Z","event":"fail","ip":"192.0.2.1",'
            b'"client":"alice","reason":"e\xc2\x9bf"}\n',
            b'{"time":"2027-01-15T08:00:06.000000Z","event":"fail","ip":"192.0.2.1",'
            b'"client":"alice","x":' + b"[" * 900 + b'"\\u0001"' + b"]" * 900 + b"}\n",
        ]
        report = summarise(raw)
        self.assertEqual(report.totals().failures, 3, "the deep one skipped")
        for name, write in FORMATS.items():
            text = write(report)
            text.encode("utf-8")
            if name != "json":
                for escaped in ("a\\ud800b", "c\\u007fd", "e\\u009bf"):
                    self.assertIn(escaped, text, (name, escaped))
        entries, total = query(raw)
        self.assertEqual(total, 3)
        self.assertEqual({e["reason"] for e in entries},
                         {"a\\ud800b", "c\\u007fd", "e\\u009bf"})

    def test_a_query_shows_them_escaped(self):
        entries, total = query(UNSHOWABLE)
        self.assertEqual(total, 3)
        self.assertEqual({e["client"] for e in entries}, {"alice", "ev\\u000ae", "bob"})
        self.assertEqual({e["reason"] for e in entries},
                         {"x\\u0001y", "unknown-client", "bad\\ud800"})


class SummaryTests(SynchronousTestCase):
    def test_per_hour(self):
        report = summarise(DAY)
        rows = report.as_dict()["rows"]
        self.assertEqual([r["start"] for r in rows], ["2027-01-15T08", "2027-01-15T09",
                                                      "2027-01-16T10"])
        self.assertEqual([(r["opens"], r["failures"], r["lockouts"], r["denials"], r["hits"])
                          for r in rows], [(1, 0, 1, 0, 1), (0, 1, 0, 1, 0), (0, 0, 0, 0, 1500)])
        self.assertEqual(rows[1]["failures_by_reason"], {"timeout": 1})

    def test_per_day_and_tops(self):
        data = summarise(DAY, "day").as_dict()
        self.assertEqual([r["start"] for r in data["rows"]], ["2027-01-15", "2027-01-16"])
        self.assertEqual(data["totals"]["hits"], 1501, "summaries count their hits")
        self.assertEqual(data["top_sources"][0], {"source": "198.51.100.9", "events": 502})
        self.assertEqual(data["top_clients"][0], {"client": "alice", "events": 3})

    def test_since(self):
        report = summarise(DAY, since="2027-01-16")
        self.assertEqual(report.totals().opens, 0)
        self.assertEqual(report.totals().hits, 1500)

    def test_formats(self):
        report = summarise(DAY)
        self.assertEqual(as_csv(report).splitlines()[1], "2027-01-15T08,1,0,1,0,1,")
        self.assertEqual(json.loads(FORMATS["json"](report))["totals"]["opens"], 1)
        self.assertIn("top sources: 198.51.100.9 (502)", FORMATS["text"](report))
        html = FORMATS["html"](report)
        self.assertIn("<svg", html)
        self.assertNotIn("src=", html, "self-contained")

    def test_duration(self):
        self.assertEqual([parse_duration(t) for t in ("90", "30m", "24h", "7d")],
                         [90, 1800, 86400, 604800])
        self.assertRaises(ValueError, parse_duration, "soon")
        self.assertRaises(ValueError, parse_duration, "-5h")

    def test_duration_at_most_ten_years(self):
        self.assertEqual(parse_duration("3650d"), MAX_DURATION)
        for text in ("3651d", "522w", "99999999999d", "9" * 400 + "d", "9" * 5000):
            error = self.assertRaises(ValueError, parse_duration, text)
            self.assertIn("at most 3650d", str(error))

    def test_run_out(self):
        self.assertEqual(run_out(100, 10, 3600), 36000)
        self.assertIsNone(run_out(100, 0, 3600))


class RotatedFilesTests(SynchronousTestCase):
    def test_rotations_read_oldest_first(self):
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "audit.log")
        written = ((".2.gz", gzip.open, DAY[0]), (".1", open, DAY[1]), ("", open, DAY[2]),
                   (".bak", open, DAY[3]))
        for suffix, opener, data in written:
            with opener(path + suffix, "wb") as handle:
                handle.write(data)
        self.assertEqual([os.path.basename(p) for p in audit_files(path)],
                         ["audit.log.2.gz", "audit.log.1", "audit.log"])
        self.assertEqual(list(audit_lines(path)), DAY[:3])


class QueryTests(SynchronousTestCase):
    def test_filters(self):
        entries, total = query(DAY, ip="192.0.2.1")
        self.assertEqual(total, 3)
        self.assertEqual(entries[0]["event"], "fail", "newest first")
        self.assertEqual(query(DAY, client="eve")[1], 1)
        self.assertEqual(query(DAY, event="hits")[1], 1)
        self.assertEqual(query(DAY, since="2027-01-16")[1], 2)
        self.assertEqual(query(DAY, until="2027-01-15T08")[1], 4)

    def test_an_address_finds_the_lockouts_of_its_source(self):
        lines = [line("2027-01-15T08:00:00.000000Z", "lockout", ip="2001:db8::1",
                      source="2001:db8::/64"),
                 line("2027-01-15T08:00:01.000000Z", "hit", ip="2001:db8::5"),
                 line("2027-01-15T08:00:02.000000Z", "hit", ip="2001:db8:0:1::5")]
        found, total = query(lines, ip="2001:db8::5", source="2001:db8::/64")
        self.assertEqual([e["event"] for e in found], ["hit", "lockout"])
        self.assertEqual(query(lines, ip="2001:db8::/64")[1], 1, "a source as itself")

    def test_time_filters(self):
        from knocker.console.auditquery import time_filter

        for typed, meant in (("2027", "2027"), ("2027-01-15 08", "2027-01-15T08"),
                             ("2027-01-15T08:00:00.000000Z", "2027-01-15T08:00:00.000000Z")):
            self.assertEqual(time_filter(typed), meant)
        for typed in ("yesterday", "27", "2027/01/15", "2027-01-15T08:00:00.000000Z1",
                      "2027-1-15", "\u0662027"):
            self.assertIsNone(time_filter(typed), typed)

    def test_pages(self):
        lines = [line(f"2027-01-15T08:00:{n:02d}.000000Z", "hit", ip="192.0.2.1")
                 for n in range(25)]
        first, total = query(lines, per_page=10)
        last, _ = query(lines, page=3, per_page=10)
        self.assertEqual(total, 25)
        self.assertEqual(first[0]["time"][17:19], "24")
        self.assertEqual([e["time"][17:19] for e in last], ["04", "03", "02", "01", "00"])


class DaemonLinesTests(SynchronousTestCase):
    def test_hit_lines_read_by_position_as_by_json(self):
        """
        Hit lines are read without a JSON parse: on what the daemon's
        audit log writes, the figures are those of the parsed events.
        """
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        path = self.mktemp()
        clock = Clock()
        clock.advance(1_800_000_000.25)
        audit = AuditLog(path, clock, min_free_mib=0)
        for n in range(50):
            audit.hit(f"198.51.100.{n % 7}", 40000 + n, 20000, "no-slot")
            audit.hit("2001:db8::1", 40000, 20001, "locked")
            clock.advance(97.3)
        audit.record("open", ip="192.0.2.1", client="alice", index=1)
        audit.close()
        with open(path, "rb") as handle:
            lines = handle.readlines()
        fast, parsed = summarise(lines), summarise([json.loads(x) for x in lines])
        self.assertEqual(fast.as_dict(), parsed.as_dict())
        self.assertEqual(fast.totals().hits, 100)
        self.assertEqual(summarise(lines, since=parsed.as_dict()["rows"][1]["start"]).as_dict(),
                         summarise([json.loads(x) for x in lines],
                                   since=parsed.as_dict()["rows"][1]["start"]).as_dict())
        # A torn last line (a crash, a full disk, a line being written) is
        # skipped, as the unparsable are, not a failed report.
        torn = summarise(lines + [lines[0][:lines[0].index(b'"ip":"') + 9]])
        self.assertEqual(torn.as_dict(), fast.as_dict())


class KnocksLeftTests(SynchronousTestCase):
    def test_run_out_at_the_reports_rate(self):
        report = summarise(DAY)
        report.add_clients([{"client": "alice", "left": 10, "knocks": 20},
                            {"client": "bob", "left": 5, "knocks": 5}], seconds=86400)
        rows = {row["client"]: row for row in report.as_dict()["knocks_left"]}
        self.assertEqual(rows["alice"]["runs_out_in_seconds"], 864000, "1 knock a day, 10 left")
        self.assertIsNone(rows["bob"]["runs_out_in_seconds"])
        self.assertIn("alice", FORMATS["text"](report))

    def test_pages_past_the_end_and_beyond_the_kept_window(self):
        lines = [line(f"2027-01-15T08:{n // 60:02d}:{n % 60:02d}.000000Z", "hit", ip="192.0.2.1")
                 for n in range(1000)]
        entries, total = query(lines, page=7, per_page=10)
        self.assertEqual(total, 1000)
        self.assertEqual(entries[0]["time"], "2027-01-15T08:15:39.000000Z")  # n = 999 - 60
        self.assertEqual(query(lines, page=101, per_page=10), ([], 1000))

    def test_pages_are_bounded(self):
        """
        The newest page * per_page matches are kept while reading: a page
        past MAX_PAGE is refused, not paid for in memory.
        """
        lines = [line("2027-01-15T08:00:00.000000Z", "hit", ip="192.0.2.1")]
        self.assertEqual(query(lines, page=MAX_PAGE), ([], 1))
        for page in (0, MAX_PAGE + 1, 10 ** 19):
            self.assertRaises(ValueError, query, lines, page=page)


class BoundedTopsTests(SynchronousTestCase):
    """
    Outsiders choose the addresses of hits and the client names of HELLOs:
    a report over their flood keeps bounded counts, still names the heavy
    sources, and says how far its counts may be off.
    """

    def test_a_flood_of_fresh_addresses_keeps_memory_bounded(self):
        from knocker.console.report import TOP_KEPT

        fresh = [line("2027-01-15T08:00:00.000000Z", "hit", ip=f"2001:db8::{n:x}", port=1)
                 for n in range(3 * TOP_KEPT)]
        heavy = [line("2027-01-15T08:30:00.000000Z", "hit", ip="198.51.100.9", port=1)] * 50
        names = [line("2027-01-15T09:00:00.000000Z", "denied", ip="203.0.113.5",
                      client=f"guess{n}", reason="unknown-client") for n in range(3 * TOP_KEPT)]
        # The heavy source's hits come between the fresh ones.
        report = summarise(fresh[:TOP_KEPT] + heavy + fresh[TOP_KEPT:] + names)
        self.assertLessEqual(len(report.sources.counts), 2 * TOP_KEPT)
        self.assertLessEqual(len(report.clients.counts), 2 * TOP_KEPT)
        data = report.as_dict()
        self.assertEqual(data["totals"]["hits"], 3 * TOP_KEPT + 50, "totals stay exact")
        self.assertEqual(data["totals"]["denials"], 3 * TOP_KEPT)
        top = data["top_sources"][0]
        short_by = data["top_sources_short_by"]
        # 203.0.113.5 made 30,000 denials, the most of any source; then
        # the heavy hitter, found with a count at most short_by too low.
        self.assertEqual(top["source"], "203.0.113.5")
        second = data["top_sources"][1]
        self.assertEqual(second["source"], "198.51.100.9")
        self.assertGreater(short_by, 0)
        self.assertLessEqual(short_by, (6 * TOP_KEPT + 50) // (TOP_KEPT + 1))
        self.assertTrue(50 - short_by <= second["events"] <= 50)
        self.assertIn(f"may be short by up to {short_by}", FORMATS["text"](report))
        self.assertIn(f"may be short by up to {short_by}", FORMATS["html"](report))

    def test_short_by_holds_for_summary_lines(self):
        """
        A hits line adds its count to a source, not one: the bound on how
        short a count is follows the hits counted, not the lines, and a
        source with more than short_by is listed within it.
        """
        from collections import Counter

        from knocker.console.report import TOP_KEPT

        lines, exact = [], Counter()
        for n in range(2 * TOP_KEPT + 1):
            ip = f"2001:db8::{n:x}"
            lines.append(line("2027-01-15T08:00:10.000000Z", "hits", ip=ip, port=1, count=100))
            exact[ip] += 100
            if n == TOP_KEPT:
                lines.append(line("2027-01-15T08:00:10.000000Z", "hits", ip="198.51.100.9",
                                  port=1, count=150))
                exact["198.51.100.9"] += 150
        report = summarise(lines)
        data = report.as_dict()
        short_by = data["top_sources_short_by"]
        self.assertGreater(short_by, data["events"] // (TOP_KEPT + 1),
                           "more than the lines / 10,001 (the old wording)")
        self.assertLessEqual(short_by, sum(exact.values()) // (TOP_KEPT + 1))
        listed = dict(report.sources.most_common(len(exact)))
        for ip, true in exact.items():
            if true > short_by:
                self.assertIn(ip, listed)
                self.assertTrue(true - short_by <= listed[ip] <= true)
        self.assertIn("198.51.100.9", listed, "150 hits, more than short_by")
        self.assertIn(f"may be short by up to {short_by}", FORMATS["text"](report))

    def test_counts_are_exact_below_the_bound(self):
        report = summarise(DAY)
        data = report.as_dict()
        self.assertEqual((data["top_sources_short_by"], data["top_clients_short_by"]), (0, 0))
        self.assertNotIn("short by", FORMATS["text"](report))

    def test_summary_bounds_hold_for_any_stream(self):
        """
        For any stream of weighted keys, against exact counting: every
        kept count is at most the true one and at least it minus
        C{short_by}; a key missing has at most C{short_by} events; and
        C{short_by} is at most the events over C{kept}+1.
        """
        from collections import Counter

        from hypothesis import given, settings
        from hypothesis import strategies as st

        from knocker.console.report import TopCounts

        @settings(max_examples=300, deadline=None)
        @given(st.integers(1, 5), st.lists(st.tuples(st.integers(0, 40), st.integers(1, 9))))
        def check(kept, stream):
            summary, exact = TopCounts(kept), Counter()
            for key, n in stream:
                summary.add(key, n)
                exact[key] += n
                self.assertLessEqual(len(summary.counts), 2 * kept)
            for key, true in exact.items():
                self.assertLessEqual(summary.get(key), true)
                self.assertGreaterEqual(summary.get(key), true - summary.short_by)
            self.assertLessEqual(summary.short_by, sum(exact.values()) // (kept + 1))

        check()


class LockoutFloodTests(SynchronousTestCase):
    """
    Source lockouts past the audit log's budget are only counted in its
    errors summaries: the report still counts every one.
    """

    def test_every_lockout_of_a_flood_is_counted(self):
        from twisted.internet.task import Clock

        from knocker.daemon.audit import AuditLog

        clock = Clock()
        clock.advance(1_800_000_000.0)
        path = self.mktemp()
        audit = AuditLog(path, clock, hit_rate=10, min_free_mib=0)
        for n in range(20_000):  # over 2 s
            audit.lockout(ip=f"2001:db8:0:{n:x}::1", source=f"2001:db8:0:{n:x}::/64",
                          scope="source", reason="wrong-port", seconds=60, step=0)
            clock.advance(0.0001)
        audit.lockout(ip="192.0.2.1", source="*", scope="global", reason="wrong-port",
                      seconds=60, step=0)
        audit.close()
        with open(path, "rb") as handle:
            lines = handle.readlines()
        self.assertLess(len(lines), 20_000, "the flood was summarised")
        report = summarise(lines)
        self.assertEqual(report.totals().lockouts, 20_001)

    def test_summary_lines_count_their_lockouts_only(self):
        lines = [
            line("2027-01-15T08:00:10.000000Z", "errors", ip="198.51.100.9", count=10,
                 outcomes={"lockout": 7, "locked": 2, "malformed": 1}),
            line("2027-01-15T08:00:10.000000Z", "errors", ip="203.0.113.5", count=4,
                 outcomes={"malformed": 4}),
            line("2027-01-15T08:00:10.000000Z", "errors-overflow", count=9, sources=3,
                 outcomes={"lockout": 5, "locked": 4}),
        ]
        data = summarise(lines).as_dict()
        self.assertEqual(data["totals"]["lockouts"], 12)
        self.assertEqual(data["top_sources"], [{"source": "198.51.100.9", "events": 7}])


    def test_summary_lines_count_their_denials_too(self):
        lines = [
            line("2027-01-15T08:00:10.000000Z", "errors", ip="198.51.100.9", count=9,
                 outcomes={"denied": 6, "lockout": 1, "locked": 2}),
            line("2027-01-15T08:00:10.000000Z", "denied", ip="198.51.100.9", client="alice",
                 reason="bad-proof"),
        ]
        totals = summarise(lines).totals()
        self.assertEqual((totals.denials, totals.lockouts), (7, 1))
        self.assertEqual(summarise(lines).as_dict()["top_sources"],
                         [{"source": "198.51.100.9", "events": 8}])


class DamagedLogTests(SynchronousTestCase):
    """
    The console reads the log inside the daemon: a damaged or hostile log
    must give a report and a search of what can be read, not an error.
    """

    # Not an event as the daemon writes one: skipped by reports and searches.
    SHAPELESS = [
        b"[1]\n", b"null\n", b'"text"\n', b"[" * 100_000 + b"\n",
        line(5, "open", ip="192.0.2.66"),
        line("2027-01-15T08:00:00.000000Z", 7, ip="192.0.2.66"),
        line("2027-01-15T08:00:00.000000Z", "hit", ip=["192.0.2.66"]),
        line("2027-01-15T08:00:00.000000Z", "open", ip={"a": 1}, client="alice"),
        line("2027-01-15T08:00:00.000000Z", "grant", ip="192.0.2.66", client=["x"]),
    ]
    # Counts that are not counts: nothing a report can add up.
    MISCOUNTED = [
        line("2027-01-15T08:00:00.000000Z", "hits", ip="192.0.2.66", count="many"),
        line("2027-01-15T08:00:00.000000Z", "hits", ip="192.0.2.66", count=[1]),
        line("2027-01-15T08:00:00.000000Z", "hits", ip="192.0.2.66", count=True),
        line("2027-01-15T08:00:00.000000Z", "errors", ip="192.0.2.66", outcomes={"lockout": "x"}),
        line("2027-01-15T08:00:00.000000Z", "errors", ip="192.0.2.66", outcomes=[1]),
    ]

    def test_a_report_skips_what_the_daemon_does_not_write(self):
        lines = DAY[:3] + self.SHAPELESS + self.MISCOUNTED + DAY[3:]
        data = summarise(lines).as_dict()
        self.assertEqual(data["totals"], summarise(DAY).as_dict()["totals"])
        self.assertEqual(data["top_sources"], summarise(DAY).as_dict()["top_sources"])
        odd_reason = line("2027-01-15T08:00:00.000000Z", "fail", ip="192.0.2.1",
                          client="alice", reason=["timeout"])
        self.assertEqual(summarise([odd_reason]).totals().reasons, {"?": 1})

    def test_a_search_skips_what_the_daemon_does_not_write(self):
        lines = DAY[:3] + self.SHAPELESS + DAY[3:]
        self.assertEqual(query(lines), query(DAY))
        self.assertEqual(query(lines, ip="192.0.2.66"), ([], 0))
        self.assertEqual(query(lines, since="2027-01-16"), query(DAY, since="2027-01-16"))

    def folder(self) -> str:
        folder = self.mktemp()
        os.makedirs(folder)
        return os.path.join(folder, "audit.log")

    def test_a_truncated_rotation_is_read_up_to_the_damage(self):
        path = self.folder()
        with gzip.open(path + ".3.gz", "wb") as handle:
            handle.write(DAY[0])
        with gzip.open(path + ".2.gz", "wb") as handle:
            handle.write(b"".join(DAY[1:3]) + os.urandom(100_000))  # (not compressible)
        with open(path + ".2.gz", "r+b") as handle:
            handle.truncate(os.path.getsize(path + ".2.gz") // 2)
        with open(path, "wb") as handle:
            handle.write(DAY[3])
        lines = audit_lines(path)
        read = list(lines)
        self.assertEqual(read[:3], DAY[:3], "what the damaged file holds before the damage")
        self.assertEqual(read[-1], DAY[3], "the files after it")
        [problem] = lines.problems
        self.assertIn("audit.log.2.gz", problem)
        report = summarise(audit_lines(path))
        self.assertEqual(report.totals().lockouts, 1)
        text = FORMATS["text"](report)
        self.assertIn("not counted (the figures may be short): audit.log.2.gz", text)
        self.assertIn("audit.log.2.gz", FORMATS["html"](report))
        self.assertEqual(json.loads(FORMATS["json"](report))["problems"], [problem])

    def test_an_endless_line_is_skipped_not_held(self):
        from knocker.console.auditfiles import MAX_LINE

        path = self.folder()
        with open(path, "wb") as handle:
            handle.write(DAY[0] + b"x" * (3 * MAX_LINE + 17) + b"\n" + DAY[1])
        lines = audit_lines(path)
        read = list(lines)
        self.assertEqual(read, DAY[:2])
        self.assertIn("1 line(s) over", lines.problems[0])

    def test_a_rotation_gone_since_the_listing_is_left_out(self):
        path = self.folder()
        for suffix, data in ((".2.gz", DAY[0]), (".1", DAY[1]), ("", DAY[2])):
            with (gzip.open if suffix.endswith(".gz") else open)(path + suffix, "wb") as handle:
                handle.write(data)
        listdir = os.listdir

        def rotated_meanwhile(directory):
            names = listdir(directory)
            if os.path.exists(path + ".2.gz"):
                os.remove(path + ".2.gz")  # logrotate's oldest, gone
            return names

        self.patch(os, "listdir", rotated_meanwhile)
        self.assertEqual(list(audit_lines(path)), DAY[1:3])
        os.remove(path + ".1")
        with open(path + ".1", "wb"):
            pass
        self.patch(os, "listdir", lambda directory: listdir(directory) + ["audit.log.5.gz"])
        self.assertEqual(list(audit_lines(path, since_epoch=0)), [DAY[2]])
