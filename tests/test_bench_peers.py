"""
The peer benchmarks run, on a tiny size (figures are not checked: timing
belongs to bench/, not to the test suite).
"""

import json
import os
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def need_root():
    if os.geteuid() != 0:
        raise SynchronousTestCase.skipException(
            "the peer benchmarks install knockd/fwknop and sniff lo: they need root")


class PeerBenchTests(SynchronousTestCase):
    def setUp(self):
        need_root()
        setup = subprocess.run(["bash", os.path.join(BENCH, "setup.sh")],
                               capture_output=True, text=True, timeout=900)
        self.assertEqual(setup.returncode, 0, setup.stdout + setup.stderr)
        self.out = os.path.abspath(self.mktemp())

    def run_bench(self, *args):
        done = subprocess.run([sys.executable, *args, "--out", self.out], cwd=ROOT,
                              capture_output=True, text=True, timeout=600)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        with open(self.out) as handle:
            return json.load(handle)

    def test_time_to_open_every_peer(self):
        report = self.run_bench(os.path.join(BENCH, "peers.py"), "--runs", "2",
                                "--flood-runs", "1", "--max-seconds", "300")
        entries = report["entries"]
        for name in ("knocker", "knocker-first", "knocker-pool10k", "knockd", "fwknop-pcap",
                     "fwknop-udp"):
            self.assertIn(name, entries, report.get("skipped"))
            self.assertGreaterEqual(entries[name]["n"], 1, entries[name])
            self.assertGreater(entries[name]["p50_ms"], 0)
        for name in ("knocker", "knocker-first", "knocker-pool10k"):
            self.assertEqual(entries[name]["failures"], 0, entries[name]["failure_reasons"])

    def test_pool_cost_against_the_c_floor(self):
        report = self.run_bench(os.path.join(BENCH, "floor.py"), "--seconds", "1",
                                "--repeat", "1")
        names = {row["name"] for row in report["summary"]}
        self.assertEqual(names, {"floor", "knocker"})
        for row in report["summary"]:
            self.assertGreater(row["cpu_us_per_hit"], 0)
            self.assertEqual(row["lost_p50"], 0, f"{row['name']} lost hits: {row}")

    def test_console_under_a_real_flood(self):
        """
        bench/console_flood.py for one short round: the daemon with its
        console and three live subscribers takes a real connect flood, and
        the subscribers are still connected at its end.
        """
        report = self.run_bench(os.path.join(BENCH, "console_flood.py"), "--seconds", "1",
                                "--repeat", "1")
        for mode in ("bare", "console"):
            self.assertGreater(report[mode]["completed_per_s_p50"], 0, report)
        self.assertEqual(report["runs"]["console"][0]["subscribers_alive_at_end"], 3, report)

    def test_knock_then_connect_through_a_door(self):
        """
        bench/door.py at one run an entry.  No timing is asserted, but one
        behaviour is: knocker knock exits only once the door is open, so
        its first connect never needs a retransmitted SYN.
        """
        report = self.run_bench(os.path.join(BENCH, "door.py"), "--runs", "1",
                                "--max-seconds", "300")
        knocker = report["entries"]["knocker-config"]
        self.assertEqual((knocker["n"], knocker["failures"]), (1, 0), knocker)
        self.assertEqual(knocker["first_connect_failed"], 0, knocker)
        self.assertEqual(knocker["syns_dropped"], 0, knocker)

    def test_ssh_door_true_through_the_door(self):
        """
        bench/ssh_door.py at one run an entry: a real ssh reaches a real
        sshd behind the door with the door open and with knocker (as
        ProxyCommand, or knocked first), none of its SYNs dropped; knockd's
        entry is run too.
        """
        report = self.run_bench(os.path.join(BENCH, "ssh_door.py"), "--runs", "1",
                                "--max-seconds", "300")
        entries = report["entries"]
        for name in ("ssh-open", "knocker-connect", "knocker-knock-ssh", "knockd-ssh"):
            self.assertIn(name, entries, report.get("skipped"))
            self.assertEqual(entries[name]["attempts"], 1, entries[name])
        for name in ("ssh-open", "knocker-connect", "knocker-knock-ssh"):
            self.assertEqual((entries[name]["n"], entries[name]["failures"]), (1, 0),
                             entries[name])
            self.assertEqual(entries[name]["syns_dropped"], 0, entries[name])
        # knockd's run is timed, not judged: its pcap capture can miss a
        # knock on a loaded machine, which says nothing about knocker.

    def test_time_to_open_over_veth(self):
        report = self.run_bench(os.path.join(BENCH, "peers.py"), "--netns", "--runs", "1",
                                "--max-seconds", "300")
        for name in ("knocker", "knocker-config", "knockd"):
            self.assertIn(name, report["entries"], report.get("skipped"))
            self.assertEqual(report["entries"][name]["failures"], 0, report["entries"][name])


class KnockPhasesBenchTests(SynchronousTestCase):
    def test_the_phases_of_a_config_knock(self):
        out = os.path.abspath(self.mktemp())
        done = subprocess.run([sys.executable, os.path.join(BENCH, "knock_phases.py"),
                               "--runs", "2", "--importtime-runs", "1", "--json", out],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        self.assertEqual(done.returncode, 0, done.stdout[-3000:] + done.stderr[-3000:])
        with open(out) as handle:
            phases = json.load(handle)["phases_ms"]
        for phase in ("config read", "challenge + proof", "grant wait", "hits", "verdict",
                      "log write"):
            self.assertIn(phase, phases)
