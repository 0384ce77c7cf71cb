"""
Invitations and enrolment with the real programs on 127.0.0.1: C{knocker
invite} prints a code, C{knocker enroll} fetches the file over plain TCP
and over TLS, writes it 0600 with a configuration that C{knocker knock
--config} opens with; used, wrong, void and expired codes are refused
with their own exit statuses, and the audit log says what happened.
"""

import json
import os
import stat
import time

from tests.helpers.processes import DaemonCase, knocker
from tests.network import tls


class EnrolCase(DaemonCase):
    def invite(self, client="bob", *extra) -> str:
        done = knocker("invite", client, "--config", self.server_conf, "--knocks", "9",
                       "--ports", "3", *extra)
        self.assertEqual(done.returncode, 0, done.stderr)
        code = done.stdout.strip()
        self.assertRegex(code, r"^[0-9]+-[a-z]+-[a-z]+-[a-z]+$", "three words")
        return code

    def enroll(self, code, out=None, server=None, *extra):
        out = out or os.path.join(self.dir, "client", "bob.knock")
        os.makedirs(os.path.dirname(out), exist_ok=True)
        return knocker("enroll", code, "--server",
                       server or f"tcp:host=127.0.0.1:port={self.port}", "-o", out, *extra)

    def assertEnrolled(self, done, out):
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr + self.daemon.log()[-2000:])
        conf = out[:-len(".knock")] + ".conf"
        self.assertIn(out, done.stdout)
        self.assertIn(conf, done.stdout)
        for path in (out, conf):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        knocked = knocker("knock", "--config", conf, "--log-file",
                          os.path.join(self.dir, "client.log"))
        self.assertEqual(knocked.returncode, 0, knocked.stdout + knocked.stderr)
        self.assertIn("OPEN", knocked.stdout)
        return conf


class EnrolTests(EnrolCase):
    def setUp(self):
        super().setUp()
        self.configure(lockout=0.5, lockout_max=0.5)
        self.start()

    def test_invite_then_enroll(self):
        code = self.invite()
        invites = self.events("invite")
        self.assertEqual([(e["client"], e["slot"]) for e in invites],
                         [("bob", int(code.split("-")[0]))])
        self.assertNotIn(code.split("-", 1)[1], open(self.audit).read(), "no code in the log")
        listed = self.status()["invitations"]
        self.assertEqual([(i["client"], i["state"], i["tries_left"]) for i in listed],
                         [("bob", "open", 3)])
        out = os.path.join(self.dir, "client", "bob.knock")
        self.assertEnrolled(self.enroll(code, out), out)
        self.assertEqual([e["outcome"] for e in self.events("enrol")], ["ok"])
        self.assertEqual(self.status()["invitations"][0]["state"], "used")
        with open(out) as mine, open(os.path.join(self.dir, "state", "clients", "bob.knock")) as theirs:
            self.assertEqual(mine.read(), theirs.read())

    def test_used_code_refused(self):
        code = self.invite()
        out = os.path.join(self.dir, "client", "bob.knock")
        self.assertEnrolled(self.enroll(code, out), out)
        again = self.enroll(code, os.path.join(self.dir, "client", "again.knock"))
        self.assertEqual(again.returncode, 21, again.stderr)
        self.assertIn("USED", again.stderr)

    def test_an_output_folder_that_cannot_be_made_spends_nothing(self):
        """
        -o into a folder that cannot be made (a file is in the way):
        refused before the exchange (status 2, the path named), the
        invitation still open; before, the code was spent and the file it
        brought thrown away.  A folder that is only missing is made, 0700.
        """
        code = self.invite()
        in_the_way = os.path.join(self.dir, "a-file")
        with open(in_the_way, "w") as handle:
            handle.write("not a folder")
        done = knocker("enroll", code, "--server", f"tcp:host=127.0.0.1:port={self.port}",
                       "-o", os.path.join(in_the_way, "keys", "bob.knock"))
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(in_the_way, done.stderr)
        self.assertEqual(self.status()["invitations"][0]["state"], "open")
        out = os.path.join(self.dir, "new", "keys", "bob.knock")
        done = knocker("enroll", code, "--server", f"tcp:host=127.0.0.1:port={self.port}",
                       "-o", out)
        self.assertEnrolled(done, out)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(out)).st_mode), 0o700)

    def test_wrong_codes_void_the_invitation(self):
        code = self.invite()
        slot = code.split("-")[0]
        wrong = "acorn-admiral" if not code.endswith("acorn-admiral") else "acorn-amber"
        for _ in range(3):
            time.sleep(0.6)  # past the source lockout a wrong code starts
            done = self.enroll(f"{slot}-{wrong}")
            self.assertEqual(done.returncode, 4, done.stderr)
            self.assertIn("WRONG_CODE", done.stderr)
        self.assertEqual(len(self.events("lockout")), 3, "each a failed attempt of its source")
        time.sleep(0.6)
        done = self.enroll(code)
        self.assertEqual(done.returncode, 23, done.stderr)
        self.assertIn("VOID", done.stderr)
        self.assertEqual([e["outcome"] for e in self.events("enrol")],
                         ["wrong-code", "wrong-code", "void", "wrong-code", "void"])
        self.assertEqual(self.status()["invitations"][0]["state"], "void")

    def test_locked_source_gets_locked(self):
        code = self.invite()
        slot = code.split("-")[0]
        done = self.enroll(f"{slot}-acorn-acorn")
        self.assertEqual(done.returncode, 4, done.stderr)
        done = self.enroll(code)
        self.assertEqual(done.returncode, 5, done.stderr)
        self.assertIn("LOCKED", done.stderr)
        time.sleep(0.6)
        out = os.path.join(self.dir, "client", "bob.knock")
        self.assertEnrolled(self.enroll(code, out), out)

    def test_expired_code_refused(self):
        code = self.invite("bob", "--expires", "0.5")
        time.sleep(0.7)
        done = self.enroll(code)
        self.assertEqual(done.returncode, 22, done.stderr)
        self.assertIn("EXPIRED", done.stderr)
        self.assertEqual(self.status()["invitations"][0]["state"], "expired")

    def test_malformed_code_is_a_usage_error(self):
        done = self.enroll("crossover-clockwork-lantern")
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertEqual(self.events("enrol"), [], "nothing sent")

    def test_invitation_survives_a_restart(self):
        code = self.invite()
        self.daemon.stop()
        self.start()
        out = os.path.join(self.dir, "client", "bob.knock")
        self.assertEnrolled(self.enroll(code, out), out)

    def test_status_text_lists_invitations(self):
        code = self.invite()
        done = knocker("status", "--config", self.server_conf)
        self.assertIn(f"invitation {code.split('-')[0]}: bob, open", done.stdout)
        self.assertNotIn(code.split("-", 1)[1], done.stdout)
        self.assertIsInstance(json.loads(knocker("status", "--config", self.server_conf,
                                                 "--json").stdout)["invitations"], list)


class TLSEnrolTests(EnrolCase):
    def test_enroll_over_tls(self):
        ca = tls.make_ca(self.dir)
        files = tls.make_server(self.dir, ca, dns_names=["knock.test"], ips=["127.0.0.1"])
        self.configure(central=tls.server_endpoint(files, port=0, interface="127.0.0.1"))
        self.start()
        code = self.invite()
        server = tls.client_endpoint(ca.trust_dir, "knock.test", self.port, connect_to="127.0.0.1")
        out = os.path.join(self.dir, "client", "bob.knock")
        conf = self.assertEnrolled(self.enroll(code, out, server), out)
        with open(conf) as handle:
            self.assertIn(f"server = {server}", handle.read())
        self.assertEqual([e["outcome"] for e in self.events("enrol")], ["ok"])

    def test_the_consoles_command_enrols_once_certs_is_filled_in(self):
        """
        The command the console shows for a TLS central port, with CERTS
        replaced by a directory holding the CA's certificate, as its page
        says: it enrols, and the knock from the written configuration
        opens.
        """
        from knocker.console.view import enrol_endpoint

        ca = tls.make_ca(self.dir)
        files = tls.make_server(self.dir, ca, dns_names=["knock.test"], ips=["127.0.0.1"])
        central = tls.server_endpoint(files, port=0, interface="127.0.0.1")
        self.configure(central=central)
        self.start()
        shown = enrol_endpoint(central, "gw.example", self.port)
        self.assertEqual(shown, f"tls:127.0.0.1:{self.port}:trustRoots=CERTS")
        out = os.path.join(self.dir, "client", "bob.knock")
        self.assertEnrolled(
            self.enroll(self.invite(), out, shown.replace("CERTS", ca.trust_dir)), out)
