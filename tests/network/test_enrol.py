"""
Enrolment between hosts, in namespaces: the administrator runs
C{knocker invite} on the server's state; the attacker host tries a wrong
code (refused, its source locked out, one try spent); the client host runs
C{knocker enroll} with the right code, gets a 0600 file and a
configuration, and knocks OPEN with it; the code is then used.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from twisted.internet.endpoints import quoteStringArgument

from .nsdaemon import CENTRAL, DaemonInNamespace


class EnrolBetweenHostsTests(DaemonInNamespace):
    def enroll(self, role: str, code: str, out: str) -> subprocess.CompletedProcess:
        server = f"tcp:host={quoteStringArgument(self.server_address())}:port={CENTRAL}"
        return self.net.run(
            role, [sys.executable, "-m", "knocker.main", "enroll", code, "--server", server,
                   "-o", out],
            env=self.env, timeout=60, check=False)

    def test_invite_wrong_code_from_the_attacker_then_enroll_from_the_client(self):
        self.start_server(knocks=9, ports=3)
        invited = subprocess.run(
            [sys.executable, "-m", "knocker.main", "invite", "bob", "--config",
             self.config_path, "--knocks", "9", "--ports", "3"],
            env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL)
        self.assertEqual(invited.returncode, 0, invited.stderr)
        code = invited.stdout.strip()
        slot, words = code.split("-", 1)
        wrong = "acorn-admiral" if words != "acorn-admiral" else "acorn-amber"

        attacker = self.enroll("attacker", f"{slot}-{wrong}",
                               os.path.join(self.directory, "attacker", "bob.knock"))
        self.assertEqual(attacker.returncode, 4, attacker.stdout + attacker.stderr)
        self.assertIn("WRONG_CODE", attacker.stderr)
        self.assertEqual([e["ip"] for e in self.audit("lockout")],
                         [self.net.address4["attacker"]])

        out = os.path.join(self.directory, "client", "bob.knock")
        os.makedirs(os.path.dirname(out))
        done = self.enroll("client", code, out)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr + self.daemon_tail())
        conf = os.path.join(self.directory, "client", "bob.conf")
        for path in (out, conf):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        self.assertEqual([e["outcome"] for e in self.audit("enrol")], ["wrong-code", "ok"])
        self.assertEqual(self.audit("enrol")[-1]["ip"], self.net.address4["client"])

        knocked = self.net.run(
            "client", [sys.executable, "-m", "knocker.main", "knock", "--config", conf,
                       "--log-file", os.path.join(self.directory, "client.log")],
            env=self.env, timeout=60, check=False)
        self.assertEqual(knocked.returncode, 0, knocked.stdout + knocked.stderr)
        self.assertIn("OPEN", knocked.stdout)

        again = self.enroll("client", code, os.path.join(self.directory, "client", "x.knock"))
        self.assertEqual(again.returncode, 21, again.stderr)
        self.assertEqual(self.status()["invitations"][0]["state"], "used")
