"""
A benchmark run records how much the machine stalled while it ran
(/proc/pressure), so a slow run says why rather than looking like a
regression.
"""

import os
import sys

from twisted.trial.unittest import SynchronousTestCase

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench")
sys.path.insert(0, BENCH)
try:
    import common
    import report
finally:  # bench's module names stay out of the rest of the suite's way
    sys.path.remove(BENCH)
    for name in ("common", "report"):
        sys.modules.pop(name, None)

IO = """some avg10=0.72 avg60=1.56 avg300=3.73 total=1793386405
full avg10=0.72 avg60=1.51 avg300=3.59 total=1670518634
"""


def reading(at_s, cpu_some, io_some, io_full):
    return {"at_s": at_s, "stalls_us": {"cpu": {"some": cpu_some, "full": 0},
                                        "io": {"some": io_some, "full": io_full},
                                        "memory": {"some": 0, "full": 0}}}


class PressureTests(SynchronousTestCase):
    def test_the_totals_are_read(self):
        self.assertEqual(common.parse_pressure(IO),
                         {"some": 1793386405, "full": 1670518634})

    def test_the_share_of_the_run_spent_stalled(self):
        before = reading(100.0, 1_000_000, 5_000_000, 4_000_000)
        after = reading(110.0, 1_500_000, 6_500_000, 5_250_000)  # 10 s later
        share = common.pressure_share(before, after)
        self.assertEqual(share["cpu"]["some"], 5.0)
        self.assertEqual(share["io"], {"some": 15.0, "full": 12.5})
        self.assertIsNone(common.pressure_share(None, after))

    def test_the_page_says_it_when_the_run_recorded_it(self):
        run = {"machine": {"stalls_pct": {"cpu": {"some": 5.0}, "io": {"some": 15.0,
                                                                       "full": 12.5}}}}
        out = []
        report.stalls_line(run, out)
        self.assertIn("some task waiting for a CPU 5.0%, for I/O 15.0% (every task 12.5%)",
                      out[-1])
        quiet = []
        report.stalls_line({"machine": {}}, quiet)
        self.assertEqual(quiet, [])

    def test_a_reading_without_some_counter_is_not_compared(self):
        before = reading(100.0, 1, 1, 1)
        after = reading(110.0, 2, 2, 2)
        del after["stalls_us"]["memory"]
        self.assertIsNone(common.pressure_share(before, after))
        self.assertIn("for I/O unknown", common.stalls_text({"cpu": {"some": 1.0}}))

    def test_this_machine_has_the_counters_or_says_none(self):
        now = common.pressure()
        if os.path.exists("/proc/pressure/io"):
            self.assertIsNotNone(now, "PSI is here but could not be read")
            self.assertIn("full", now["stalls_us"]["io"])
        else:
            self.assertIsNone(now)
