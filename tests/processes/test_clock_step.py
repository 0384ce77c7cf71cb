"""
Stepping the wall clock under a running daemon (libfaketime, which moves
the wall clock of one process and leaves its monotonic clock alone, as an
administrator's `date -s` or a bad NTP step would): lockouts and open
doors last what they say, and the step is logged.
"""

import os
import time

from twisted.trial.unittest import SkipTest

from tests.helpers.processes import DaemonCase

LIBFAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


class ClockStepTests(DaemonCase):
    def setUp(self):
        if not os.path.exists(LIBFAKETIME):
            raise SkipTest(f"{LIBFAKETIME} missing: install Debian's faketime "
                           f"(tests/run.sh does, as root)")
        super().setUp()
        self.offset = os.path.join(self.dir, "faketime")
        self.set_offset("+0")

    def set_offset(self, offset: str) -> None:
        with open(self.offset, "w") as handle:
            handle.write(offset + "\n")

    def start_faked(self):
        return self.start(env={
            "LD_PRELOAD": LIBFAKETIME, "FAKETIME_TIMESTAMP_FILE": self.offset,
            "FAKETIME_NO_CACHE": "1", "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        })

    def wait_for(self, event, seconds=15):
        deadline = time.monotonic() + seconds
        while not self.events(event):
            self.assertLess(time.monotonic(), deadline, f"no {event} event")
            time.sleep(0.1)
        return self.events(event)

    def test_a_lockout_is_not_stretched_by_a_step_back(self):
        """
        A 5 s lockout of the whole server, then the wall clock goes back an
        hour: the lockout still ends 5 s after it began (it became
        'LOCKED 3605' when it ran on the wall clock), and the step is
        audited.
        """
        import socket

        self.configure(lockout_scope="global", lockout=5)
        knock_file = self.generate()
        self.start_faked()
        pool = self.status()["pool"]
        socket.create_connection(("127.0.0.1", pool[0]), timeout=5).close()
        self.wait_for("lockout")
        locked_at = time.monotonic()
        self.set_offset("-1h")
        result = self.knock(knock_file)
        self.assertEqual(result.returncode, 5, result.stdout + result.stderr)
        self.assertLessEqual(self.events("locked")[-1]["retry_after"], 5)
        time.sleep(max(0.0, locked_at + 5.5 - time.monotonic()))
        self.assertOpens(knock_file)
        step = self.wait_for("clock-step")[0]
        self.assertLess(step["seconds"], -3500)

    def test_an_open_door_closes_on_time_after_a_step_back(self):
        """
        open-duration = 2: the wall clock goes back an hour while the door
        is open; on-close still runs about 2 s after on-success (it was
        postponed by the hour when timers ran on the wall clock).
        """
        closer, closed = self.recorder("on-close")
        self.configure(on_close=closer, open_duration=2)
        knock_file = self.generate()
        self.start_faked()
        self.assertOpens(knock_file)
        opened = time.monotonic()
        self.set_offset("-1h")
        deadline = opened + 10
        while not os.path.exists(closed):
            self.assertLess(time.monotonic(), deadline, "the close did not run")
            time.sleep(0.1)
        self.assertLess(time.monotonic() - opened, 6)

    def recorder(self, name):
        from tests.helpers.processes import write_recorder

        return write_recorder(self.dir, name)
