"""
The audit log's bounds on real filesystems and a real daemon: a flood of
connections is cut to audit-hit-rate hit lines a second with every hit
still counted; a nearly full filesystem (a small tmpfs, so as root) gets
summaries only; a filesystem that fills up mid-line leaves no torn line.
"""

import json
import os
import socket
import subprocess
import tempfile
import time

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, TestCase

from knocker.daemon.audit import AuditLog
from tests.helpers.processes import DaemonCase


def mount_tmpfs(case: TestCase, size: str) -> str:
    """
    A fresh tmpfs of C{size}, unmounted at the end of C{case}; the test is
    skipped, saying why, where it cannot be mounted.
    """
    if os.geteuid() != 0:
        raise SkipTest("mounting a small tmpfs needs root")
    where = tempfile.mkdtemp(prefix="knocker-tmpfs-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", where],
                          capture_output=True, text=True)
    if done.returncode != 0:
        os.rmdir(where)
        raise SkipTest(f"cannot mount a tmpfs: {done.stderr.strip() or done.returncode}")

    def unmount():
        if subprocess.run(["umount", where], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", where], capture_output=True)
        os.rmdir(where)

    case.addCleanup(unmount)
    return where


def strict_lines(path: str) -> list[dict]:
    """
    Every line a whole JSON object, the last one included.
    """
    with open(path, "rb") as handle:
        data = handle.read()
    if data and not data.endswith(b"\n"):
        raise AssertionError(f"{path} ends in a fragment: {data[-80:]!r}")
    return [json.loads(line) for line in data.split(b"\n") if line]


def hit_count(events: list[dict]) -> int:
    return sum(1 if e["event"] == "hit" else e["count"]
               for e in events if e["event"] in ("hit", "hits", "hits-overflow"))


def _posix(stamp: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def connect_many(ports: list[int], n: int) -> None:
    """
    C{n} full connections, round the C{ports}, each closed at once.
    """
    for i in range(n):
        with socket.create_connection(("127.0.0.1", ports[i % len(ports)]), timeout=10):
            pass


class FullFilesystemTests(TestCase):
    def test_a_filesystem_filling_up_mid_line_tears_no_line(self):
        """
        A 64 KiB tmpfs: the log fills it (a real short write, part of a
        line), events are lost while it is full; once space is freed, the
        next events are whole lines of their own and a restart finds
        nothing to repair.
        """
        where = mount_tmpfs(self, "64k")
        with open(os.path.join(where, "filler"), "wb") as handle:
            handle.write(b"\0" * 40 * 1024)
        path = os.path.join(where, "audit.log")
        clock = Clock()
        clock.advance(1764028800.0)
        audit = AuditLog(path, clock, min_free_mib=0)
        index = 0
        while audit.dropped < 3:
            index += 1
            audit.record("grant", ip="192.0.2.1", client="alice" * (index % 7), index=index)
            clock.advance(0.001)
            self.assertLess(index, 10_000, "the filesystem never filled up")
        written = strict_lines(path)
        self.assertEqual([e["index"] for e in written], list(range(1, len(written) + 1)))
        os.remove(os.path.join(where, "filler"))
        audit.record("open", ip="192.0.2.1", client="alice", index=index)
        audit.hit("192.0.2.1", 40000, 20001, "no-slot")
        audit.close()
        events = strict_lines(path)
        self.assertEqual(events[:len(written)], written)
        self.assertEqual([e["event"] for e in events[len(written):]], ["open", "hit"])

        again = AuditLog(path, clock, min_free_mib=0)
        again.record("start")
        again.close()
        self.assertEqual([e["event"] for e in strict_lines(path)[-3:]], ["open", "hit", "start"],
                         "no torn tail for the restart to repair")


class AuditFloodTests(DaemonCase):
    def test_a_connect_flood_is_summarised_and_every_hit_counted(self):
        """
        audit-hit-rate = 20: 600 connections to the pool as fast as they
        go; the log has about 20 hit lines a second of the flood, the rest
        in hits summaries written within 10 s, and counts every connection.
        """
        self.configure(audit_hit_rate=20)
        self.start()
        [start] = self.events("start")
        self.assertLess(abs(_posix(start["time"]) - time.time()), 300, "wall time, not uptime")
        pool = self.status()["pool"]
        began = time.monotonic()
        connect_many(pool, 600)
        took = time.monotonic() - began
        deadline = time.monotonic() + 30
        while hit_count(self.events()) < 600 and time.monotonic() < deadline:
            time.sleep(0.2)
        events = strict_lines(self.audit)
        self.assertEqual(hit_count(events), 600, f"daemon:\n{self.daemon.log()[-2000:]}")
        lines = [e for e in events if e["event"] == "hit"]
        self.assertLessEqual(len(lines), 20 + 20 * (took + 1))
        summaries = [e for e in events if e["event"] == "hits"]
        self.assertTrue(summaries)
        self.assertEqual({e["ip"] for e in summaries}, {"127.0.0.1"})
        self.assertLessEqual({e["port"] for e in summaries}, set(pool))
        for e in summaries:
            self.assertEqual(e["count"], sum(e["outcomes"].values()))

    def test_low_space_writes_summaries_only(self):
        """
        The log on a 1 MiB tmpfs with audit-min-free = 1: less than 1 MiB is
        ever free there, so hits are only summarised (written at the stop),
        with one audit-low-space event and a warning (a source's lockout
        too); start and stop are written as always.
        """
        where = mount_tmpfs(self, "1m")
        self.addCleanup(self._stop_daemon)   # before the unmount
        self.configure(audit_min_free=1, audit_log=os.path.join(where, "audit.log"))
        self.audit = os.path.join(where, "audit.log")
        self.start()
        connect_many(self.status()["pool"], 200)
        deadline = time.monotonic() + 10
        while not self.events("audit-low-space") and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        self.daemon.stop()
        events = strict_lines(self.audit)
        kinds = [e["event"] for e in events]
        self.assertEqual(kinds.count("audit-low-space"), 1, kinds)
        self.assertNotIn("hit", kinds)
        self.assertEqual(kinds[0], "start")
        self.assertLess(kinds.index("audit-low-space"), kinds.index("stop"))
        # A source's lockout, like its hits, is only counted while space is
        # short (an errors line, the reason lockout); the report counts it.
        lockouts = kinds.count("lockout") + sum(
            e.get("outcomes", {}).get("lockout", 0) for e in events
            if e["event"] in ("errors", "errors-overflow"))
        self.assertEqual(lockouts, 1, "the pool's first stray hit locks its source out")
        self.assertEqual(hit_count(events), 200)
        self.assertIn("under audit-min-free", self.daemon.log())
