"""
Doors never outlive the daemon, as real processes: a real C{twistd -n
knockserver} on 127.0.0.1 stopped with SIGTERM runs its pending closes
before it exits; on-check restoring the firewall gets the open doors
opened again, at start, every interval, and at once on SIGHUP; a daemon
that cannot use its state directory says which key and what to do.
"""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SkipTest

from tests.helpers.processes import ROOT, DaemonCase, read_lines, write_recorder

#: An on-check program: records each run; exits with the first number in
#: its plan file (removing it), 0 once the plan is empty.
CHECK = """#!{python}
import json, os, sys
with open({out!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv, "env": sorted(set(os.environ) - {{"LC_CTYPE"}})}}) + "\\n")
plan = {plan!r}
codes = open(plan).read().split() if os.path.exists(plan) else []
open(plan, "w").write(" ".join(codes[1:]))
sys.exit(int(codes[0]) if codes else 0)
"""


class StopTests(DaemonCase):
    def setUp(self):
        super().setUp()
        self.close, self.close_out = write_recorder(self.dir, "on-close")

    def test_sigterm_runs_the_pending_closes_before_exit(self):
        self.configure(on_close=self.close, open_duration=300, pool_range="22000-31999")
        knock_file = self.generate()
        self.start()
        self.assertOpens(knock_file)
        self.assertEqual(read_lines(self.close_out), [])
        started = time.monotonic()
        self.daemon.process.send_signal(signal.SIGTERM)
        # twistd ends by the signal that stopped it (systemd counts that as clean)
        self.assertEqual(self.daemon.wait_exit(15), -signal.SIGTERM)
        self.assertLess(time.monotonic() - started, 5)
        self.assertEqual([r["argv"][1:] for r in read_lines(self.close_out)],
                         [["127.0.0.1", "alice", "1"]])
        events = [e["event"] for e in self.events()]
        self.assertEqual(events[-2:], ["close", "stop"])
        self.assertEqual(self.status()["pending_closes"], 0)

    def test_a_close_that_fails_at_stop_runs_at_the_next_start(self):
        failing = os.path.join(self.dir, "failing-close")
        with open(failing, "w") as handle:
            handle.write(f"#!/bin/sh\n[ -e {self.dir}/close-works ] || exit 1\n"
                         f"exec {self.close} \"$@\"\n")
        os.chmod(failing, 0o700)
        self.configure(on_close=failing, open_duration=300, pool_range="22000-31999")
        knock_file = self.generate()
        self.start()
        self.assertOpens(knock_file)
        self.daemon.stop()
        self.assertEqual(self.status()["pending_closes"], 1)
        open(os.path.join(self.dir, "close-works"), "w").close()
        self.start()
        deadline = time.monotonic() + 10
        while self.status()["pending_closes"] and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertEqual([r["argv"][1:] for r in read_lines(self.close_out)],
                         [["127.0.0.1", "alice", "1"]], "closed at once, not at its time")


class FirewallCheckTests(DaemonCase):
    def setUp(self):
        super().setUp()
        self.check = os.path.join(self.dir, "check-firewall")
        self.check_out = self.check + ".jsonl"
        self.plan = os.path.join(self.dir, "plan")
        with open(self.check, "w") as handle:
            handle.write(CHECK.format(python=sys.executable, out=self.check_out, plan=self.plan))
        os.chmod(self.check, 0o700)

    def wait_for(self, predicate, what, seconds=10):
        deadline = time.monotonic() + seconds
        while not predicate():
            self.assertLess(time.monotonic(), deadline, f"{what}\n{self.daemon.log()[-3000:]}")
            time.sleep(0.05)

    def test_restored_firewall_gets_the_open_doors_back(self):
        close, _ = write_recorder(self.dir, "on-close")
        self.configure(on_check=self.check, check_interval=0.5, on_close=close,
                       open_duration=300, pool_range="22000-31999",
                       action_env="KNOCKER_NFT_TABLE")
        knock_file = self.generate()
        self.start(env={"KNOCKER_NFT_TABLE": "door", "KNOCKER_NFT": "/not/passed"})
        self.wait_for(lambda: len(read_lines(self.check_out)) >= 2, "checks every 0.5 s")
        [first, *_] = read_lines(self.check_out)
        self.assertEqual(first["argv"], [self.check])
        self.assertEqual(first["env"], ["KNOCKER_NFT_TABLE", "PATH"])
        self.assertOpens(knock_file)
        with open(self.plan, "w") as handle:
            handle.write("10")
        self.wait_for(lambda: len(read_lines(self.success_out)) == 2, "on-success again")
        again = read_lines(self.success_out)[1]
        self.assertEqual(again["argv"][1:], ["127.0.0.1", "alice", "1"])
        self.assertEqual(again["env"]["KNOCKER_NFT_TABLE"], "door")
        self.assertNotIn("KNOCKER_NFT", again["env"])
        [event] = self.events("firewall")
        self.assertEqual((event["status"], event["doors"]), ("restored", 1))

    def test_sighup_checks_at_once_and_a_failure_is_logged_once(self):
        self.configure(on_check=self.check, check_interval=3600, pool_range="22000-31999")
        self.generate()
        self.start()
        self.wait_for(lambda: len(read_lines(self.check_out)) == 1, "the check at start")
        with open(self.plan, "w") as handle:
            handle.write("3 3")
        for runs in (2, 3):
            self.daemon.process.send_signal(signal.SIGHUP)
            self.wait_for(lambda runs=runs: len(read_lines(self.check_out)) == runs,
                          "a check on SIGHUP")
        self.daemon.process.send_signal(signal.SIGHUP)
        self.wait_for(lambda: len(self.events("firewall")) == 2, "the recovery")
        self.assertEqual([(e["status"], e.get("exit_code")) for e in self.events("firewall")],
                         [("failed", 3), ("ok", None)])
        said = [line for line in self.daemon.log().splitlines() if "on-check" in line]
        self.assertEqual(len(said), 2, "once failed, once ok again:\n" + "\n".join(said))


class UnusableStateTests(DaemonCase):
    def test_a_state_dir_the_daemon_cannot_write(self):
        """
        The daemon as another user than the state directory's owner: it
        refuses to start, naming state-dir, the path and the chown.
        """
        if os.geteuid() != 0 or shutil.which("setpriv") is None:
            raise SkipTest("needs root and setpriv, to run the daemon as nobody")
        entry = pwd.getpwnam("nobody")
        os.chmod(self.dir, 0o755)
        self.configure(state_dir="state", audit_log="logs/audit.log", on_success=None)
        self.generate()
        os.makedirs(os.path.join(self.dir, "logs"))
        os.chown(os.path.join(self.dir, "logs"), entry.pw_uid, entry.pw_gid)
        done = subprocess.run(
            ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--clear-groups",
             sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "knockserver", "--config", self.server_conf],
            cwd="/", env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True,
            timeout=60)
        if "No module named" in done.stderr + done.stdout:
            raise SkipTest("nobody cannot run this checkout")
        self.assertNotEqual(done.returncode, 0)
        state = os.path.join(self.dir, "state")
        self.assertIn(f"state-dir = {state}: user nobody", done.stdout + done.stderr)
        self.assertIn("chown", done.stdout + done.stderr)
