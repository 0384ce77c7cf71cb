"""
The JSON-lines audit log: hot-path hit lines, file modes, torn lines.
"""

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
        audit.reopen()
        audit.record("stop")
        audit.close()
        self.assertEqual([e["event"] for e in read_audit(os.path.join(moved, "audit.log"))],
                         ["start", "stop"])
        self.assertFalse(os.path.exists(path))


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
