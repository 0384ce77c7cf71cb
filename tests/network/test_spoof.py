"""
Spoofed SYNs are not hits (docs/spec.md section 2: "only a completed handshake is a
hit, so a spoofed SYN never counts").

The attacker namespace forges TCP SYNs (scapy) with the client's source
address to the daemon's pool ports.  The server's kernel answers each with a
SYN-ACK that goes to the real client, whose kernel knows no such connection
and resets it: the handshake never completes, the daemon never accepts a
connection, so nothing is recorded and nothing is judged.  A sniffer on the
server's bridge shows that the forged SYNs did arrive and were answered that
way, so "no hit" is not just "nothing got there".
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import time

from . import netns
from .nsdaemon import RAWTCP, DaemonInNamespace

#: Source ports of the forged SYNs (below the ephemeral range, so no real
#: connection of the client shares them).
SPORT = 1100
DECOYS = 4


class SpoofTests(DaemonInNamespace):
    def spoof(self, family: int, ports: list[int]) -> list[dict]:
        """
        The attacker sends one SYN per port with the client's address as
        source.  Returns the segments seen on the server's bridge for those
        source ports, once every SYN got its SYN-ACK and its RST (or 10 s).
        """
        sniffer = self.net.spawn(
            "server", [sys.executable, RAWTCP, "sniff", "br0", str(SPORT),
                       str(SPORT + len(ports) - 1), "30"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.assertEqual(netns.read_line(sniffer, 10), "ready\n", "the sniffer did not start")
        client = self.net.address4["client"] if family == 4 else self.net.address6["client"]
        sent = self.net.run(
            "attacker",
            [sys.executable, RAWTCP, "spoof", "eth0", self.net.link_address("server"), client,
             self.server_address(family), str(SPORT), ",".join(map(str, ports))],
            env=self.env, timeout=60,
        )
        self.assertEqual(json.loads(sent.stdout)["sent"],
                         [[SPORT + n, port] for n, port in enumerate(ports)])
        time.sleep(1.0)  # the SYN-ACKs and RSTs take microseconds on a bridge
        sniffer.stdin.write("stop\n")
        sniffer.stdin.flush()
        line = netns.read_line(sniffer, 10)
        self.net.stop(sniffer)
        self.assertTrue(line, "the sniffer reported nothing")
        return json.loads(line)

    def assertResetByClient(self, family: int, ports: list[int], segments: list[dict]) -> None:
        """
        Each forged SYN reached the server, the server's SYN-ACK went to the
        real client, and the client reset it.
        """
        client = self.net.address4["client"] if family == 4 else self.net.address6["client"]
        server = self.server_address(family)
        for n, port in enumerate(ports):
            sport = SPORT + n
            mine = [s for s in segments if {s["sport"], s["dport"]} == {sport, port}]
            syn = [s for s in mine if s["src"] == client and s["flags"] == "S"]
            synack = [s for s in mine if s["src"] == server and s["dst"] == client
                      and s["flags"] == "SA"]
            reset = [s for s in mine if s["src"] == client and "R" in s["flags"]]
            self.assertTrue(syn and synack and reset,
                            f"forged SYN to port {port}: the bridge saw {mine}")
            self.assertFalse([s for s in mine if s["src"] == client and s["flags"] == "A"],
                             f"port {port}: the handshake was completed: {mine}")

    def decoys(self, knock: list[int]) -> list[int]:
        pool = self.status()["pool"]
        return random.sample([port for port in pool if port not in knock], DECOYS)

    def assertNoEffect(self) -> None:
        events = self.audit()
        self.assertEqual([e for e in events if e["event"] == "hit"], [],
                         "a forged SYN was recorded as a hit")
        self.assertEqual([e for e in events if e["event"] in ("open", "fail", "lockout")], [])

    def assertRealConnectionCounts(self, family: int, port: int) -> None:
        """
        The control: a real connection from the attacker to the same kind of
        port is recorded at once (so the audit log was being written all
        along) and, with no slot of its own, starts a lockout.
        """
        attacker = self.net.address4["attacker"] if family == 4 else self.net.address6["attacker"]
        outcome = self.net.connect("attacker", self.server_address(family), port, timeout=2)
        self.assertNotIn(outcome, ("timeout", "refused"))
        self.wait_until(lambda: any(e["ip"] == attacker for e in self.audit("hit")), 5,
                        "the attacker's hit")
        self.assertEqual([(e["port"], e["outcome"]) for e in self.audit("hit")
                          if e["ip"] == attacker], [(port, "no-slot")])
        self.assertEqual([(e["ip"], e["scope"]) for e in self.audit("lockout")],
                         [(attacker, "global")])

    def during_a_slot(self, family: int) -> None:
        self.start_server(family, lockout_scope="global")  # the strictest: any real hit counts
        client = self.net.address4["client"] if family == 4 else self.net.address6["client"]
        held = self.hold("client", family)
        self.assertEqual(held.index, 1, held.first)
        knock = held.ports
        decoys = self.decoys(knock)
        # the granted ports in their order, then decoys: each would be a
        # hit (progress, then wrong-port) if a forged SYN counted
        targets = knock + decoys
        self.assertResetByClient(family, targets, self.spoof(family, targets))
        self.assertNoEffect()
        self.assertEqual([(e["ip"], e["index"]) for e in self.audit("grant")], [(client, 1)])
        self.assertEqual(held.verdict("knock"), "OPEN", self.daemon_tail())
        hits = self.audit("hit")
        self.assertEqual([(e["ip"], e["port"]) for e in hits], [(client, p) for p in knock])
        self.assertEqual([e["outcome"] for e in hits],
                         ["progress"] * (len(knock) - 1) + ["complete"])
        self.assertEqual([(e["ip"], e["index"]) for e in self.audit("open")], [(client, 1)])
        self.assertEqual(self.audit("fail") + self.audit("lockout"), [])
        self.assertRealConnectionCounts(family, decoys[0])

    def test_spoofed_syns_during_a_slot(self) -> None:
        """
        While knock 1 is granted to the client and its connection is held
        open, the attacker forges SYNs from the client's address to the
        granted ports, in order, and to decoys: none is a hit, the slot
        neither completes nor fails; the client then knocks for real and
        gets OPEN.
        """
        self.during_a_slot(4)

    def test_spoofed_syns_during_a_slot_ipv6(self) -> None:
        """
        The same over IPv6, the daemon on the server's IPv6 address.
        """
        self.during_a_slot(6)

    def test_spoofed_syns_without_a_slot(self) -> None:
        """
        With no knock in progress a real hit is a failed attempt that locks
        everyone out; forged SYNs from the client's address are not hits, so
        they start no lockout and the client's knock right after opens.
        Then the control: one real connection from the attacker does.
        """
        self.start_server(lockout_scope="global")
        knock = self.knock_ports(1)
        targets = knock + self.decoys(knock)
        self.assertResetByClient(4, targets, self.spoof(4, targets))
        self.assertNoEffect()
        self.assertEqual(self.status()["lockouts"], {})
        result = self.knock()
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr + self.daemon_tail())
        self.assertEqual([e["index"] for e in self.audit("open")], [1])
        self.assertRealConnectionCounts(4, targets[-1])
