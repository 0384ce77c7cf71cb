"""
Renewal with the real programs: a client with a 9-knock file knocks 20
times in a row with C{knocker knock}, every knock OPEN, renewing on the
way; it ends with a new secret in a 0600 file, and its first secret is
DENIED.  The plain knock's start-up does not load the renewal modules.
"""

import os
import shutil
import stat
import subprocess
import sys

from knocker.core.knockfile import parse_knockfile
from knocker.files import read_private
from tests.helpers.processes import ROOT, DaemonCase, environment


class RenewalTests(DaemonCase):
    def test_twenty_knocks_on_a_nine_knock_file(self):
        self.configure()
        knock_file = self.generate(knocks=9, ports=3)
        first = os.path.join(self.dir, "first.knock")
        shutil.copy(knock_file, first)
        os.chmod(first, 0o600)
        self.start()
        renewed = 0
        for n in range(20):
            result = self.knock(knock_file)
            self.assertEqual(result.returncode, 0, f"knock {n + 1}: {result.stdout}{result.stderr}"
                                                   f"\n{self.daemon.log()[-2000:]}")
            renewed += "renewed" in result.stdout
        self.assertEqual(renewed, 3, "at 3 knocks left of each 9-knock file")
        self.assertEqual(stat.S_IMODE(os.stat(knock_file).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(knock_file + ".prev").st_mode), 0o600)
        now = parse_knockfile(read_private(knock_file), knock_file)
        then = parse_knockfile(read_private(first), first)
        self.assertNotEqual(now.secret, then.secret)
        self.assertEqual(len(self.events("open")), 20)
        self.assertEqual([e["by"] for e in self.events("renew-confirm")], ["confirm"] * 3,
                         "confirmed on the renewing connection")
        grants = [e["index"] for e in self.events("grant")]
        self.assertEqual(grants, [1, 2, 3, 4, 5, 6] * 3 + [1, 2])
        denied = self.knock(first)
        self.assertEqual(denied.returncode, 4, denied.stdout + denied.stderr)
        self.assertIn("DENIED", denied.stderr)
        self.assertEqual(self.status()["clients"][0]["used"], 2)

    def test_a_big_file_is_renewed_while_the_daemon_serves(self):
        """
        A file of 50,000 knocks: its renewal is drawn on the reactor a batch
        a turn and written in a thread (knocker.daemon.renewals), about half
        a second here.  Another client's knock, started once the first one's
        OPEN is in the audit log, OPENs before that renewal is offered: the
        daemon served it mid-drawing (drawn in one go, it waited).  The first
        client takes the whole new file.
        """
        import time

        self.configure(renew_at=50_000)
        big = self.generate("alice", knocks=50_000, ports=3)
        other = self.generate("bob", knocks=9, ports=3)
        self.start()
        first = subprocess.Popen(
            [sys.executable, "-m", "knocker.main", "knock", "--server",
             f"tcp:host=127.0.0.1:port={self.port}", "--knock-file", big,
             "--log-file", os.path.join(self.dir, "client.log")],
            env=environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.addCleanup(first.kill)
        deadline = time.monotonic() + 30
        while not self.events("open") and time.monotonic() < deadline:
            time.sleep(0.005)
        result = self.knock(other)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        out, err = first.communicate(timeout=60)
        self.assertEqual(first.returncode, 0, out + err)
        self.assertIn("renewed", out)
        self.assertEqual(len(parse_knockfile(read_private(big), big).knocks), 50_000)
        order = [(e["event"], e["client"]) for e in self.events()
                 if e["event"] == "open" or e["event"] == "renew-offer" and e["client"] == "alice"]
        self.assertEqual(order, [("open", "alice"), ("open", "bob"), ("renew-offer", "alice")])

    def test_knock_start_up_loads_no_enrolment_module(self):
        """
        A whole knock that OPENs with no renewal due (8 of 9 knocks left)
        loads nothing of enrolment or its cryptography.
        """
        self.configure()
        knock_file = self.generate(knocks=9, ports=3)
        self.start()
        done = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "knocker.main", "knock",
             "--server", f"tcp:host=127.0.0.1:port={self.port}", "--knock-file", knock_file],
            cwd=ROOT, env=environment(), capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("OPEN", done.stdout)
        loaded = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines()
                  if line.startswith("import time:")]
        self.assertTrue(any(name.startswith("knocker.client") for name in loaded), loaded)
        for name in loaded:
            self.assertFalse(name.startswith(("knocker.enrol", "spake2", "cryptography")), name)


class TLSRenewalTests(DaemonCase):
    def test_renewal_through_the_twisted_driver(self):
        """
        Over TLS C{knocker knock} runs the Twisted driver (as
        C{twistd knockclient} does): the same renewal.
        """
        from tests.network import tls

        ca = tls.make_ca(self.dir)
        files = tls.make_server(self.dir, ca, dns_names=["knock.test"], ips=["127.0.0.1"])
        self.configure(central=tls.server_endpoint(files, port=0, interface="127.0.0.1"),
                       renew_at=2)
        knock_file = self.generate(knocks=4, ports=3)
        first = read_private(knock_file)
        self.start()
        server = tls.client_endpoint(ca.trust_dir, "knock.test", self.port, connect_to="127.0.0.1")
        outputs = []
        for _ in range(6):
            result = self.knock(knock_file, server=server)
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
            outputs.append(result.stdout)
        self.assertEqual(["renewed" in out for out in outputs], [False, True] * 3)
        self.assertNotEqual(read_private(knock_file), first)
        self.assertEqual([e["by"] for e in self.events("renew-confirm")], ["confirm"] * 3)
        self.assertEqual([e["index"] for e in self.events("grant")], [1, 2, 1, 2, 1, 2])


class KnockClientRenewalTests(DaemonCase):
    def test_twistd_knockclient_renews(self):
        """
        C{twistd knockclient} runs the same knock coroutine: it takes the
        offer, and its next run proves the new file.
        """
        from knocker.admin.demo import twistd_command
        from tests.helpers.processes import write_config

        self.configure(renew_at=2)
        knock_file = self.generate(knocks=4, ports=3)
        first = read_private(knock_file)
        self.start()
        conf = write_config(os.path.join(self.dir, "client.conf"), "client",
                            server=f"tcp:host=127.0.0.1:port={self.port}",
                            knock_file=knock_file, log_file="client.log")
        outputs = []
        for _ in range(3):
            done = subprocess.run(
                twistd_command() + ["-n", "--pidfile=", "knockclient", "--config", conf],
                cwd=self.dir, env=environment(), capture_output=True, text=True, timeout=60)
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
            self.assertIn("OPEN", done.stdout + done.stderr)
            outputs.append(done.stdout + done.stderr)
        self.assertIn("renewed", outputs[1])
        self.assertEqual(read_private(knock_file + ".prev"), first)
        self.assertEqual(len(self.events("renew-confirm")), 1)
        self.assertEqual([e["index"] for e in self.events("grant")], [1, 2, 1])
