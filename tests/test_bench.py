"""
The knocker-only benchmarks (bench/inprocess.py, scale.py, clients.py,
durability.py, renewal_stall.py and the rest below) run on a tiny size and
write sane JSON.  No timing is asserted: figures belong to bench/, the
suite only keeps the scripts working.
"""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

from tests.helpers import postgres

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


class KnockerBenchTests(SynchronousTestCase):
    def run_bench(self, script, *args):
        out = os.path.abspath(self.mktemp()) + ".json"
        done = subprocess.run(
            [sys.executable, os.path.join(BENCH, script), "--quick", "--out", out, *args],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        with open(out) as handle:
            return json.load(handle)

    def assertPositive(self, value, what):
        self.assertIsInstance(value, (int, float), what)
        self.assertGreater(value, 0, what)

    def test_inprocess(self):
        report = self.run_bench("inprocess.py", "--profile")
        knock = report["knock"]
        self.assertEqual(knock["failures"], 0, report.get("failure_reasons"))
        self.assertGreaterEqual(knock["n"], 1)
        for key in ("p50_ms", "p95_ms", "min_ms"):
            self.assertPositive(knock[key], key)
        self.assertIn("epoll", report["reactor"])
        for phase in ("connect", "handshake", "hits_x6", "verdict"):
            self.assertPositive(report["phases_p50_ms"][phase], phase)
        self.assertPositive(report["server_p50_ms"]["store_burn"], "burn")
        profile = report["profile"]
        self.assertPositive(profile["total_ms_per_knock"], "profile total")
        self.assertTrue(profile["top_tottime"])

    def test_renewal_stall(self):
        report = self.run_bench("renewal_stall.py")
        self.assertEqual(set(report["ways"]), {"batched", "in-one-go"})
        for way, summary in report["ways"].items():
            self.assertPositive(summary["ready_ms"], way)
            self.assertGreater(summary["samples"][0]["probe_calls"], 0, way)

    def test_scale(self):
        report = self.run_bench("scale.py")
        kinds = {(row["kind"], row["pool_size"]) for row in report["summary"]}
        self.assertEqual(kinds, {(k, n) for k in ("knockserver", "bare-twisted") for n in (10, 100)})
        for row in report["summary"]:
            self.assertPositive(row["ready_ms_p50"], row)
            self.assertPositive(row["rss_mb_p50"], row)
        self.assertTrue(report["inherited_limit_probe"]["starts"])

    def test_clients(self):
        report = self.run_bench("clients.py")
        rows = {row["clients"]: row for row in report["summary"]}
        self.assertEqual(set(rows), {1, 100})
        for row in rows.values():
            self.assertEqual(row["not_granted"], 0, row)
            for key in ("ready_ms_p50", "rss_ready_mb_p50", "rss_after_mb_p50", "grant_p50_ms"):
                self.assertPositive(row[key], key)
        self.assertIn("grant_p50_ms", report["ratios_many_vs_one"])

    def test_durability(self):
        report = self.run_bench("durability.py")
        self.assertEqual(len(report["raw"]), 4)
        for row in report["raw"]:
            self.assertPositive(row["per_s_p50"], row["what"])
        states = {(row["state"], row["threads"]) for row in report["exchanges"]}
        self.assertEqual(states, {(s, t) for s in ("disk", "tmpfs") for t in (1, 4)})
        for row in report["exchanges"]:
            self.assertEqual(row["not_granted"], 0, row)
            self.assertPositive(row["grants_per_s_p50"], row)
            self.assertPositive(row["latency_p50_ms"], row)
        self.assertIn("fsync_us_per_burn", report["cost"])

    def test_audit_report(self):
        report = self.run_bench("audit_report.py")
        self.assertTrue(report["totals_match"], report)
        self.assertEqual(report["lines"], 10_000)
        self.assertPositive(report["seconds_best"], "seconds_best")

    def test_console(self):
        report = self.run_bench("console.py")
        for flood in ("scan_256_sources", "new_source_every_hit"):
            self.assertPositive(report[flood]["hits_per_second_bare"], flood)
            self.assertPositive(report[flood]["hits_per_second_console"], flood)
        for key in ("overview_ms", "clients_page_ms", "metrics_ms"):
            self.assertPositive(report[key], key)

    def test_fleet(self):
        """
        bench/fleet.py on a throwaway PostgreSQL cluster (root, Debian's
        postgresql): exchanges, lockout propagation, and time to open
        through the fleet, where every knock must end OPEN.
        """
        report = self.run_bench("fleet.py")
        states = {row["state"] for row in report["exchanges"]}
        self.assertEqual(states, {"SQLite, 1 daemon", "PostgreSQL, 1 gateway",
                                  "PostgreSQL, 2 gateways"})
        for row in report["exchanges"]:
            self.assertEqual(row["not_granted"], 0, row)
            self.assertPositive(row["grants_per_s_p50"], row["state"])
        self.assertEqual(report["lockout_propagation"]["failures"], 0)
        opened = {row["entry"]: row for row in report["time_to_open"]["entries"]}
        self.assertEqual(set(opened), {"python -c pass", "SQLite, 1 daemon",
                                       "PostgreSQL, 2 gateways",
                                       "PostgreSQL, 2 gateways, first dead"})
        for entry, row in opened.items():
            self.assertEqual(row["failures"], 0, row)
            self.assertGreaterEqual(row["n"], 1, entry)
            self.assertPositive(row["p50_ms"], entry)
            self.assertPositive(row["p95_ms"], entry)
            if entry != "python -c pass":  # every knock ended in an OPEN logged by a daemon
                self.assertEqual(sum(row["opened_by"].values()), row["n"], row)
                self.assertNotIn(None, row["opened_by"], row)
        # the fleet's knocks reached both gateways, past the dead endpoint too
        for entry in ("PostgreSQL, 2 gateways", "PostgreSQL, 2 gateways, first dead"):
            self.assertEqual(set(opened[entry]["opened_by"]), {"gw1", "gw2"}, opened[entry])

    test_fleet.skip = postgres.skip_reason()
