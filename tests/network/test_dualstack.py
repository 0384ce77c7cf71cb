"""
The daemon on "::" (every IPv6 and IPv4 address of the server namespace):
an IPv4 client reaches it through IPv4-mapped addresses, and everything
(grant, hits, the success action's argv, lockouts) counts under the plain
IPv4 address (docs/spec.md section 5); an IPv6 client counts under its IPv6 address.
"""

from __future__ import annotations

from twisted.internet.endpoints import quoteStringArgument

from tests.helpers.processes import read_lines

from .nsdaemon import CENTRAL, DaemonInNamespace


class DualStackTests(DaemonInNamespace):
    def test_ipv4_client_counts_as_ipv4_on_a_dual_stack_daemon(self):
        """
        knocker knock over IPv4, then over IPv6, against one daemon on
        "::": both OPEN, each recorded under its own plain address; then
        an IPv4 attacker's stray hit locks out under its IPv4 address.
        """
        self.start_server(central=f"tcp6:{CENTRAL}:interface={quoteStringArgument('::')}",
                          interface="::", lockout_scope="source")
        client4, client6 = self.net.address4["client"], self.net.address6["client"]
        for family in (4, 6):
            result = self.knock(family=family)
            self.assertEqual(result.returncode, 0,
                             result.stdout + result.stderr + self.daemon_tail())
        self.assertEqual([(e["ip"], e["index"]) for e in self.audit("grant")],
                         [(client4, 1), (client6, 2)])
        self.assertEqual({e["ip"] for e in self.audit("hit")}, {client4, client6})
        self.assertEqual([(e["ip"], e["index"]) for e in self.audit("open")],
                         [(client4, 1), (client6, 2)])
        self.assertEqual([r["argv"][1:] for r in read_lines(self.success_out)],
                         [[client4, "alice", "1"], [client6, "alice", "2"]])
        attacker4 = self.net.address4["attacker"]
        port = self.status()["pool"][0]
        self.assertNotIn(self.net.connect("attacker", self.server_address(4), port, timeout=2),
                         ("timeout", "refused"))
        self.wait_until(lambda: any(e["ip"] == attacker4 for e in self.audit("hit")), 5,
                        "the attacker's hit")
        self.wait_until(lambda: self.audit("lockout"), 5, "the attacker's lockout")
        self.assertEqual([(e["ip"], e["scope"]) for e in self.audit("lockout")],
                         [(attacker4, "source")])
