"""
The whole system on a real network, in namespaces: ``twistd knockserver``
runs in the server namespace with etc/scripts/nft-open and nft-close as its
actions and the base ruleset protecting port 2222; ``knocker knock`` runs in
the client namespace; the attacker namespace tries its luck.

The daemon and the client are separate processes started the way an admin
and a user would (``twistd -n --pidfile= knockserver --config FILE`` and
``python -m knocker.main knock --config FILE``), with this checkout first on
PYTHONPATH; L{tests.network.nsdaemon} starts the daemon.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from . import tls
from .nsdaemon import CENTRAL, ROOT, DaemonInNamespace, knock_ports, read_audit

SCRIPTS = os.path.join(ROOT, "etc", "scripts")

PROTECTED = 2222
OPEN_DURATION = 3
LOCKOUT = 2
CONNECT_TIMEOUT = 1.0

CLIENT_CONF = """\
[client]
server = {server}
knock-file = {directory}/alice.knock
log-file = {directory}/client.log
"""


class KnockTests(DaemonInNamespace):
    """
    The daemon of L{DaemonInNamespace}, with the real nftables actions in
    front of a service on port 2222.
    """

    need_nft = True

    def setUp(self) -> None:
        super().setUp()
        self.server4 = self.net.address4["server"]
        self.env["KNOCKER_PROTECTED_PORTS"] = str(PROTECTED)
        self.net.listen("server", PROTECTED)
        self.net.run("server", [os.path.join(SCRIPTS, "nft-setup")], env=self.env)

    # -- helpers -------------------------------------------------------------

    def write(self, name: str, text: str) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        return path

    def start_server(self, central: str | None = None) -> None:
        super().start_server(
            knocks=5, ports=4,
            central=central or f"tcp:{CENTRAL}:interface={self.server4}",
            pool_size=20, pool_range="20000-20999", knock_window=10, lockout=LOCKOUT,
            on_success=os.path.join(SCRIPTS, "nft-open"),
            on_close=os.path.join(SCRIPTS, "nft-close"), open_duration=OPEN_DURATION,
        )

    def knock(self, server: str | None = None) -> subprocess.CompletedProcess:
        config = self.write("client.conf", CLIENT_CONF.format(
            server=server or f"tcp:host={self.server4}:port={CENTRAL}",
            directory=self.directory,
        ))
        return self.net.run(
            "client", [sys.executable, "-m", "knocker.main", "knock", "--config", config],
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

    def test_a_second_knock_keeps_the_door_open(self) -> None:
        """
        Knocking again while the door is open keeps it open open-duration
        from the second knock: the first knock's close, falling due in
        between, waits for the second's (nft-close takes the address out,
        whichever knock it runs for).  Both closes run in the end.
        """
        self.start_server()
        self.assertKnockOpens()
        first = time.monotonic()
        time.sleep(1.5)
        self.assertKnockOpens()
        second = time.monotonic()
        client4 = self.net.address4["client"]
        self.assertEqual(self.allowed(), {client4: "knocker alice #2"})
        # Past the first knock's time, well before the second's.
        time.sleep(max(0.0, first + OPEN_DURATION + 0.8 - time.monotonic()))
        self.assertLess(time.monotonic(), second + OPEN_DURATION - 0.3, "the host is too slow")
        self.assertEqual(self.allowed(), {client4: "knocker alice #2"})
        self.assertEqual(self.connect("client"), "ok")
        self.wait_until(lambda: not self.allowed(), OPEN_DURATION + 10, "the close")
        self.assertGreaterEqual(time.monotonic(), second + OPEN_DURATION - 0.2)
        self.assertEqual(self.connect("client"), "timeout")
        self.wait_until(lambda: len([e for e in read_audit(self.audit_path)
                                     if e["event"] == "close"]) == 2, 10, "both closes")
        closes = [e for e in read_audit(self.audit_path) if e["event"] == "close"]
        self.assertEqual(sorted(e["index"] for e in closes), [1, 2])
        self.assertTrue(all(e["ok"] for e in closes), closes)

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
