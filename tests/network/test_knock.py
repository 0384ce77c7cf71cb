"""
The whole system on a real network, in namespaces: ``twistd knockserver``
runs in the server namespace with etc/scripts/nft-open and nft-close as its
actions and the base ruleset protecting port 2222; ``knocker knock`` runs in
the client namespace; the attacker namespace tries its luck.

The daemon and the client are separate processes started the way an admin
and a user would (``twistd -n --pidfile= knockserver --config FILE`` and
``python -m knocker.cli knock --config FILE``), with this checkout first on
PYTHONPATH.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, TestCase

from . import netns, tls

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCRIPTS = os.path.join(ROOT, "etc", "scripts")

PROTECTED = 2222
CENTRAL = 7000
OPEN_DURATION = 3
LOCKOUT = 2
CONNECT_TIMEOUT = 1.0

SERVER_CONF = """\
[server]
central = {central}
interface = {interface}
state-dir = {directory}/state
pool-size = 20
pool-range = 20000-20999
knock-window = 10
lockout = {lockout}
lockout-scope = global
on-success = {scripts}/nft-open
on-close = {scripts}/nft-close
open-duration = {open_duration}
script-timeout = 5
audit-log = {directory}/audit.log
"""

CLIENT_CONF = """\
[client]
server = {server}
knock-file = {directory}/alice.knock
log-file = {directory}/client.log
"""


def twistd_command() -> list[str]:
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def read_audit(path: str) -> list[dict]:
    events = []
    if os.path.exists(path):
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                try:
                    events.append(json.loads(line))
                except ValueError:
                    pass  # a line being written
    return events


def knock_ports(path: str, index: int) -> list[int]:
    """
    The ports of knock C{index} in a portknock file (SPEC section 3).
    """
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            number, _, ports = line.strip().partition(" ")
            if number == str(index):
                return [int(port) for port in ports.split(",")]
    raise LookupError(f"no knock {index} in {path}")


class KnockTests(TestCase):
    def setUp(self) -> None:
        ok, reason = netns.available(need_nft=True)
        if not ok:
            raise SkipTest(reason)
        # not self.mktemp(): under pytest that lands in the working directory
        self.directory = tempfile.mkdtemp(prefix="knocker-netns-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.net = netns.Topology()
        self.addCleanup(self.net.destroy)
        self.net.create()
        self.server4 = self.net.address4["server"]
        self.env = {
            "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])),
            "KNOCKER_PROTECTED_PORTS": str(PROTECTED),
        }
        self.net.listen("server", PROTECTED)
        self.net.run("server", [os.path.join(SCRIPTS, "nft-setup")], env=self.env)
        self.audit_path = os.path.join(self.directory, "audit.log")

    # -- helpers -------------------------------------------------------------

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path

    def start_server(self, central: str | None = None) -> None:
        """
        Write the configuration, generate alice's file, start the daemon in
        the server namespace and wait for its start event.
        """
        config = self.write("server.conf", SERVER_CONF.format(
            central=central or f"tcp:{CENTRAL}:interface={self.server4}",
            interface=self.server4, directory=self.directory, scripts=SCRIPTS,
            lockout=LOCKOUT, open_duration=OPEN_DURATION,
        ))
        generate = subprocess.run(
            [sys.executable, "-m", "knocker.cli", "generate", "alice", "--config", config,
             "--knocks", "5", "--ports", "4", "-o", os.path.join(self.directory, "alice.knock")],
            env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30,
            stdin=subprocess.DEVNULL,
        )
        self.assertEqual(generate.returncode, 0, generate.stderr)
        self.daemon_log = os.path.join(self.directory, "twistd.log")
        with open(self.daemon_log, "wb") as log:
            self.daemon = self.net.spawn(
                "server",
                twistd_command() + ["-n", "--pidfile=", "knockserver", "--config", config],
                env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
            )
        deadline = time.monotonic() + 20
        while not any(e["event"] == "start" for e in read_audit(self.audit_path)):
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                self.fail(f"knockserver did not start:\n{self.daemon_tail()}")
            time.sleep(0.1)

    def daemon_tail(self) -> str:
        with open(self.daemon_log, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-30:])

    def knock(self, server: str | None = None) -> subprocess.CompletedProcess:
        config = self.write("client.conf", CLIENT_CONF.format(
            server=server or f"tcp:host={self.server4}:port={CENTRAL}",
            directory=self.directory,
        ))
        return self.net.run(
            "client", [sys.executable, "-m", "knocker.cli", "knock", "--config", config],
            env=self.env, timeout=60, check=False,
        )

    def assertKnockOpens(self, server: str | None = None) -> None:
        result = self.knock(server)
        self.assertEqual(
            result.returncode, 0,
            f"knock: {result.stdout}{result.stderr}\ndaemon:\n{self.daemon_tail()}",
        )

    def allowed(self) -> dict:
        """
        The allowed IPv4 set: address -> comment.
        """
        result = self.net.run("server", [self.net.nft, "-j", "list", "set", "inet", "knocker",
                                         "allowed_v4"])
        found = {}
        for item in json.loads(result.stdout)["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                if isinstance(element, dict):
                    found[element["elem"]["val"]] = element["elem"].get("comment", "")
                else:
                    found[element] = ""
        return found

    def connect(self, role: str, port: int = PROTECTED) -> str:
        return self.net.connect(role, self.server4, port, timeout=CONNECT_TIMEOUT)

    def wait_until(self, predicate, seconds: float, what: str) -> None:
        deadline = time.monotonic() + seconds
        while not predicate():
            if time.monotonic() > deadline:
                self.fail(f"{what} did not happen within {seconds}s\n{self.daemon_tail()}")
            time.sleep(0.2)

    # -- tests -----------------------------------------------------------------

    def test_knock_opens_then_closes(self) -> None:
        """
        A right knock from the client namespace runs nft-open for the
        client's address only; open-duration later nft-close takes it away.
        """
        self.start_server()
        client4 = self.net.address4["client"]
        self.assertEqual(self.connect("client"), "timeout")
        self.assertKnockOpens()
        self.assertEqual(self.allowed(), {client4: "knocker alice #1"})
        self.assertEqual(self.connect("client"), "ok")
        self.assertEqual(self.connect("attacker"), "timeout")
        self.wait_until(lambda: not self.allowed(), OPEN_DURATION + 10, "the close")
        self.assertEqual(self.connect("client"), "timeout")
        events = read_audit(self.audit_path)
        names = [e["event"] for e in events]
        for name in ("grant", "open", "close"):
            self.assertIn(name, names)
        hits = [e for e in events if e["event"] == "hit"]
        self.assertEqual(len(hits), 4)
        self.assertEqual({e.get("ip") for e in hits}, {client4})

    def test_replay_by_attacker(self) -> None:
        """
        The attacker, knowing the ports of a used knock, replays them: the
        firewall does not open for it, the audit log names it, and after the
        lockout the client's next knock works.
        """
        self.start_server()
        client4, attacker4 = self.net.address4["client"], self.net.address4["attacker"]
        self.assertKnockOpens()
        for port in knock_ports(os.path.join(self.directory, "alice.knock"), 1):
            # the pool port accepts and closes at once: no banner, but a hit
            self.assertNotIn(self.connect("attacker", port), ("timeout", "refused"))
        self.assertEqual(set(self.allowed()), {client4})
        self.assertEqual(self.connect("attacker"), "timeout")
        self.wait_until(
            lambda: any(e["event"] == "hit" and e.get("ip") == attacker4
                        for e in read_audit(self.audit_path)),
            5, "the attacker's hits in the audit log",
        )
        self.assertIn("lockout", [e["event"] for e in read_audit(self.audit_path)])
        self.wait_until(lambda: not self.allowed(), OPEN_DURATION + 10, "the close")
        time.sleep(LOCKOUT)
        self.assertKnockOpens()
        self.assertEqual(self.allowed(), {client4: "knocker alice #2"})

    def test_tls_central_port(self) -> None:
        """
        The same over TLS: the client checks the server's name (knock.test)
        against a test CA; with another CA it refuses and nothing opens.
        """
        ca = tls.make_ca(self.directory)
        files = tls.make_server(self.directory, ca, dns_names=["knock.test"], ips=[self.server4])
        self.start_server(central=tls.server_endpoint(files, CENTRAL, interface=self.server4))
        other = tls.make_ca(self.directory, name="another CA", basename="other")
        result = self.knock(tls.client_endpoint(
            other.trust_dir, "knock.test", CENTRAL, connect_to=self.server4))
        self.assertNotEqual(result.returncode, 0, result.stdout)
        self.assertEqual(self.allowed(), {})
        self.assertKnockOpens(tls.client_endpoint(
            ca.trust_dir, "knock.test", CENTRAL, connect_to=self.server4))
        self.assertEqual(set(self.allowed()), {self.net.address4["client"]})
        self.assertEqual(self.connect("client"), "ok")
