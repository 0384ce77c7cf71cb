"""
kill -9 at random moments, over real processes on 127.0.0.1.

A background client knocks again and again (the real client coroutine,
L{knocker.client.command.run_knock}, in a thread) while the daemon is killed with
SIGKILL 0-150 ms after it became ready, and started again, a dozen times.
The kills land before a grant, between the grant and the hits, while the
success action runs, between knocks, and while due closes run.  Afterwards:
no knock number was granted twice (audit log and what the clients got),
every OPEN's on-close action ran, and the audit log is JSON lines throughout.
"""

import json
import os
import random
import threading
import time

from knocker.client.command import load_knockfile, run_knock
from knocker.client.knock import Outcome
from knocker.core.config import parse_client_config
from knocker.daemon.audit import read_audit
from tests.helpers.processes import Daemon, DaemonCase, free_port, read_lines, write_recorder

CYCLES = 12


class KnockLoop(threading.Thread):
    """
    Knock until told to stop (or 120 s), one knock right after the other;
    remember what each knock got.
    """

    def __init__(self, config):
        super().__init__(daemon=True)
        self._config = config
        self._halt = threading.Event()
        self.results = []
        self.error = None

    def run(self):
        deadline = time.monotonic() + 120
        try:
            while not self._halt.is_set() and time.monotonic() < deadline:
                result = run_knock(self._config, load_knockfile(self._config))
                self.results.append(result)
                if result.outcome is Outcome.UNREACHABLE:
                    time.sleep(0.01)
                elif result.outcome in (Outcome.LOCKED, Outcome.BUSY):
                    time.sleep(min(result.retry_after or 1, 1) / 4)
        except BaseException as error:  # shown by the test
            self.error = error

    def stop(self):
        self._halt.set()
        self.join(30)


class CrashTests(DaemonCase):
    def setUp(self):
        super().setUp()
        self.close_script, self.close_out = write_recorder(self.dir, "on-close")
        self.central = free_port()
        self.configure(central=f"tcp:{self.central}:interface=127.0.0.1", pool_size=30,
                       ports_per_knock=6, on_close=self.close_script, open_duration=1,
                       knock_window=3, lockout=1)
        self.knock_file = self.generate(knocks=1000, ports=6)

    def client_config(self):
        return parse_client_config(overrides={
            "server": f"tcp:host=127.0.0.1:port={self.central}",
            "knock-file": self.knock_file,
            "log-file": os.path.join(self.dir, "client.log"),
            "timeout": "5", "connect-timeout": "2", "busy-retries": "0",
        })

    def test_kill_9_at_random_moments(self):
        """
        Twelve kill -9s, each 0-150 ms after the daemon became ready while a
        client knocks in a loop, then a last start: no number granted twice,
        every OPEN was closed again (on-close ran, and the audit log says
        so), closes pending at a kill ran after the restart, and the audit
        log is JSON lines throughout.
        """
        loop = KnockLoop(self.client_config())
        self.addCleanup(loop.stop)
        rng = random.Random()
        delays = []
        self.start()
        loop.start()
        for _ in range(CYCLES):
            delay = rng.uniform(0, 0.150)
            delays.append(delay)
            time.sleep(delay)
            self.daemon.kill9()
            self.start()
        # After the last restart: let the client get through twice more,
        # then wait for every pending close.
        opens_before = len(self.events("open"))
        deadline = time.monotonic() + 30
        while len(self.events("open")) < opens_before + 2:
            self.assertLess(time.monotonic(), deadline, f"no OPEN after the crashes:\n"
                            f"{self.daemon.log()[-3000:]}")
            self.assertIsNone(loop.error)
            time.sleep(0.05)
        loop.stop()
        self.assertIsNone(loop.error)
        self.assertFalse(loop.is_alive(), "the client loop did not stop")
        deadline = time.monotonic() + 30
        while self.status()["pending_closes"]:
            self.assertLess(time.monotonic(), deadline, "pending closes did not run")
            time.sleep(0.1)
        self.daemon.stop()
        outcomes = {}
        for result in loop.results:
            outcomes[result.outcome.name] = outcomes.get(result.outcome.name, 0) + 1
        summary = (f"{CYCLES} kills at {', '.join(f'{d * 1000:.0f}' for d in delays)} ms "
                   f"after ready; client outcomes {outcomes}")

        # The audit log: one JSON object a line, every line, in the middle too.
        with open(self.audit, "rb") as handle:
            raw = handle.read()
        self.assertTrue(raw.endswith(b"\n"))
        for number, line in enumerate(raw.split(b"\n")[:-1], start=1):
            try:
                json.loads(line)
            except ValueError:
                self.fail(f"audit line {number} is not JSON: {line[:200]!r}")
        events = read_audit(self.audit)
        self.assertEqual(len([e for e in events if e["event"] == "start"]), CYCLES + 1)

        # No number granted twice: the audit log's grants only go up, and
        # what the clients were granted is among them, once each.
        granted = [e["index"] for e in events if e["event"] == "grant"]
        self.assertEqual(granted, sorted(set(granted)), "a knock number was granted twice")
        received = [r.index for r in loop.results if r.index is not None]
        self.assertEqual(len(received), len(set(received)), "a client got a number twice")
        self.assertLessEqual(set(received), set(granted))
        client_log = [e["index"] for e in read_lines(os.path.join(self.dir, "client.log"))
                      if e["index"] is not None]
        self.assertEqual(len(client_log), len(set(client_log)))
        got_open = {r.index for r in loop.results if r.outcome is Outcome.OPEN}
        opened = {e["index"] for e in events if e["event"] == "open"}
        self.assertLessEqual(got_open, opened, "a client got OPEN the audit log does not show")
        self.assertGreaterEqual(len(granted), CYCLES, "too few grants to prove anything")
        self.assertTrue([r for r in loop.results if r.index is not None
                         and r.outcome is not Outcome.OPEN],
                        f"no kill landed inside a knock: {summary}")

        # Every OPEN's door was closed again, by a close that ran (at least
        # once: a kill during on-close runs it again after the restart).
        closed_runs = {int(r["argv"][3]) for r in read_lines(self.close_out)}
        self.assertEqual(sorted(opened - closed_runs), [], "OPENs whose on-close never ran")
        close_scripts = {e["index"] for e in events
                         if e["event"] == "script" and e["action"] == "on-close"}
        self.assertEqual(sorted(opened - close_scripts), [],
                         "OPENs with no on-close 'script' event in the audit log")
        successes = {int(r["argv"][3]) for r in read_lines(self.success_out)}
        self.assertLessEqual(opened, successes)
        # A close scheduled in the state before on-success ran is run even
        # when the daemon died before it could say OPEN.
        self.assertLessEqual(successes - opened, closed_runs)
        # open-duration (1 s) outlives each daemon here (killed <= 150 ms
        # after it was ready), so closes ran after restarts, from the state.
        starts = [e["time"] for e in events if e["event"] == "start"]
        closed_events = {e["index"] for e in events if e["event"] == "close"}

        def carried_over(close):
            opens = [o["time"] for o in events
                     if o["event"] == "open" and o["index"] == close["index"]]
            return any(o < start < close["time"] for o in opens for start in starts)

        self.assertTrue([e for e in events if e["event"] == "close" and carried_over(e)],
                        "no close was carried over a restart")
        self.assertEqual(
            sorted(opened - closed_events), [],
            "OPENs whose on-close ran (recorder, 'script' event) but whose 'close' event is "
            "missing: the daemon died after committing the close's removal from the state "
            "and before writing the 'close' event",
        )

    def test_torn_audit_line_then_restart(self):
        """
        A crash in the middle of an audit write leaves a last line without
        its end (simulated: kill -9, then cut the last line short).  After
        the restart the log must still be JSON lines, the torn fragment
        must not swallow the restart's first event, and read_audit must
        read it.
        """
        self.start()
        self.assertOpens(self.knock_file)
        self.daemon.kill9()
        with open(self.audit, "rb+") as handle:
            last = handle.read().rsplit(b"\n", 2)[-2]
            size = handle.seek(0, os.SEEK_END)
            handle.truncate(size - 25)  # the last event, torn
        fragment = last[:-24].decode()
        daemon = Daemon(self.server_conf, self.audit, self.dir)
        self.daemon = daemon
        deadline = time.monotonic() + 30
        # Two starts in the file (the closes pending at the kill run right
        # after the second, so it need not stay the last line).
        while open(self.audit, "rb").read().count(b'"event":"start"') < 2:
            self.assertIsNone(daemon.process.poll(), daemon.log())
            self.assertLess(time.monotonic(), deadline, "no start event after the restart")
            time.sleep(0.05)
        try:
            events = read_audit(self.audit)
        except ValueError as error:
            self.fail(f"the audit log is broken after a torn write and a restart: {error}")
        self.assertEqual([e["event"] for e in events].count("start"), 2,
                         "the restart's start event was swallowed by the torn line")
        self.assertTrue(any(fragment in str(value) for e in events for value in e.values()),
                        f"the torn fragment {fragment!r} was not kept as evidence")

    def test_lockout_survives_kill_9(self):
        """
        A lockout of the whole server is in the state at once: kill -9 and a
        restart do not lift it.
        """
        self.assert_lockout_survives_kill_9("global", settle=0)

    def test_source_lockout_survives_kill_9(self):
        """
        Source lockouts are saved in a batch within a second: after that,
        kill -9 and a restart do not lift them.
        """
        self.assert_lockout_survives_kill_9("source", settle=1.5)

    def assert_lockout_survives_kill_9(self, scope, settle):
        self.configure(central=f"tcp:{self.central}:interface=127.0.0.1", lockout=60,
                       ports_per_knock=6, lockout_scope=scope)
        self.start()
        import socket

        pool = self.status()["pool"]
        socket.create_connection(("127.0.0.1", pool[0]), timeout=5).close()  # no slot: a failure
        deadline = time.monotonic() + 10
        while not self.events("lockout"):
            self.assertLess(time.monotonic(), deadline, "no lockout")
            time.sleep(0.05)
        time.sleep(settle)
        self.daemon.kill9()
        self.start()
        result = self.knock(self.knock_file)
        self.assertEqual(result.returncode, 5, result.stdout + result.stderr)
        self.assertIn("LOCKED", result.stderr)
