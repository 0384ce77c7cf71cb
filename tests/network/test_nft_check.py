"""
etc/scripts/nft-check (knocker-nft ensure), knocker's on-check program, for
real in the server namespace: silent and changeless while the base ruleset
is in place; after a flush, or with a piece of it gone, it loads it again
and exits 10 (so that knocker re-adds its open doors).
"""

from __future__ import annotations

import ipaddress
import os

from .test_firewall import NFT_OPEN, PROTECTED, SCRIPTS, FirewallTestCase

NFT_CHECK = os.path.join(SCRIPTS, "nft-check")
RESTORED = 10


class EnsureTests(FirewallTestCase):
    def test_in_place_is_silent_and_changes_nothing(self) -> None:
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1")
        before = self.ruleset()
        result = self.script(NFT_CHECK)
        self.assertEqual((result.returncode, result.stdout, result.stderr), (0, "", ""))
        self.assertEqual(self.ruleset(), before)

    def test_after_a_flush_it_loads_the_table_again(self) -> None:
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1")
        self.net.run("server", [self.net.nft, "flush", "ruleset"])
        self.assertEqual(self.connect("attacker", self.server4), "ok", "the flush opened it")
        result = self.script(NFT_CHECK)
        self.assertEqual(result.returncode, RESTORED, result.stderr)
        self.assertIn("loaded again", result.stdout)
        self.assertEqual(self.connect("attacker", self.server4), "timeout")
        self.assertEqual(self.elements("allowed_v4"), {}, "the addresses are the daemon's job")
        self.assertEqual(self.script(NFT_CHECK).returncode, 0)

    def test_a_missing_piece_is_put_back_and_addresses_kept(self) -> None:
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1")
        for piece in (["flush", "chain", "inet", "knocker", "input"],
                      ["delete", "chain", "inet", "knocker", "input"]):
            self.net.run("server", [self.net.nft, *piece])
            self.assertEqual(self.script(NFT_CHECK).returncode, RESTORED, piece)
            self.assertEqual(self.connect("attacker", self.server4), "timeout", piece)
            self.assertEqual(set(self.elements("allowed_v4")),
                             {ipaddress.ip_address(self.client4)}, piece)
            self.assertEqual(self.connect("client", self.server4), "ok", piece)

    def test_bad_settings_fail_without_loading(self) -> None:
        self.net.run("server", [self.net.nft, "flush", "ruleset"])
        result = self.script(NFT_CHECK, env={"KNOCKER_PROTECTED_PORTS": "ssh"})
        self.assertEqual(result.returncode, 2)
        self.assertIn("KNOCKER_PROTECTED_PORTS", result.stderr)
        self.assertEqual(self.ruleset().strip(), "")
        self.assertEqual(self.script(NFT_CHECK, "extra").returncode, 2)

    def test_protected_port_is_the_settings(self) -> None:
        self.net.run("server", [self.net.nft, "flush", "ruleset"])
        self.assertEqual(self.script(NFT_CHECK).returncode, RESTORED)
        self.assertIn("dport @protected_ports", self.ruleset())
        self.assertIn(str(PROTECTED), self.ruleset())
