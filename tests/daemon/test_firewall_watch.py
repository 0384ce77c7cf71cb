"""
The firewall watch (knocker/daemon/firewall.py): on-check at start and
every check-interval, quiet while the firewall is in place, doors opened
again when the program had to restore it, a failure logged once.
"""

from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.trial.unittest import SynchronousTestCase

from knocker.daemon.actions import MemoryRunner
from knocker.daemon.audit import MemoryAudit
from knocker.daemon.firewall import RESTORED, FirewallWatch

PROGRAM = "/etc/knocker/scripts/nft-check"


class FirewallWatchTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.runner = MemoryRunner(hold=True)
        self.audit = MemoryAudit()
        self.restored = []
        self.watch = FirewallWatch(self.clock, self.runner, PROGRAM, 2.0,
                                   {"PATH": "/bin", "KNOCKER_NFT_TABLE": "door"}, self.audit,
                                   self.restore)

    def restore(self):
        self.restored.append(self.clock.seconds())
        return 3

    def test_checks_at_start_with_no_arguments(self):
        self.watch.start()
        self.assertEqual(self.runner.calls, [([PROGRAM], {"PATH": "/bin",
                                                          "KNOCKER_NFT_TABLE": "door"})])

    def test_every_interval_after_the_last_run_ended(self):
        self.watch.start()
        self.clock.advance(5)  # a slow check: no second run meanwhile
        self.assertEqual(len(self.runner.calls), 1)
        self.runner.finish(0)
        self.clock.advance(1.9)
        self.assertEqual(len(self.runner.calls), 1)
        self.clock.advance(0.1)
        self.assertEqual(len(self.runner.calls), 2)

    def test_in_place_says_nothing(self):
        self.watch.start()
        with capturedLogs() as events:
            for _ in range(5):
                self.runner.finish(0)
                self.clock.advance(2)
        self.assertEqual(self.audit.events, [])
        self.assertEqual(events, [])
        self.assertEqual(self.restored, [])

    def test_restored_reopens_the_doors(self):
        self.watch.start()
        self.runner.finish(RESTORED)
        self.assertEqual(len(self.restored), 1)
        [event] = self.audit.of("firewall")
        self.assertEqual((event["status"], event["doors"]), ("restored", 3))
        self.clock.advance(2)
        self.runner.finish(0)
        self.assertEqual(len(self.restored), 1)

    def test_a_failure_is_logged_once_and_its_end_too(self):
        self.watch.start()
        with capturedLogs() as events:
            for _ in range(4):
                self.runner.finish(3)
                self.clock.advance(2)
            self.runner.finish(0)
        self.assertEqual([e["status"] for e in self.audit.of("firewall")], ["failed", "ok"])
        self.assertEqual(self.audit.of("firewall")[0]["exit_code"], 3)
        self.assertEqual(len([e for e in events if e["log_level"].name == "error"]), 1)
        self.assertFalse(self.watch.failing)
        self.assertEqual(self.restored, [])

    def test_check_now_runs_at_once_or_right_after_the_running_one(self):
        self.watch.start()
        self.watch.check_now()
        self.assertEqual(len(self.runner.calls), 1, "no overlap")
        self.runner.finish(0)
        self.assertEqual(len(self.runner.calls), 2, "right after")
        self.runner.finish(0)
        self.clock.advance(1)
        self.watch.check_now()
        self.assertEqual(len(self.runner.calls), 3)
        self.runner.finish(0)
        self.clock.advance(1.5)
        self.assertEqual(len(self.runner.calls), 3, "the interval starts again")
        self.clock.advance(0.5)
        self.assertEqual(len(self.runner.calls), 4)

    def test_stop(self):
        self.watch.start()
        self.watch.stop()
        self.runner.finish(RESTORED)
        self.assertEqual(self.restored, [], "nothing done after stop")
        self.clock.advance(100)
        self.assertEqual(len(self.runner.calls), 1)
        self.watch.check_now()
        self.assertEqual(len(self.runner.calls), 1)

    def test_not_started_does_nothing(self):
        self.watch.check_now()
        self.clock.advance(10)
        self.assertEqual(self.runner.calls, [])
