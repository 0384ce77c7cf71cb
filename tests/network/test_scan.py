"""
A port scan from the attacker namespace (``nmap -sT``, full connections)
across the daemon's pool range.

What a scan can learn: which ports are open.  The pool is, all of it, and
nothing else in the range is; the ports of the current and the next knock
look exactly like the decoys.  What a scan does: every connection it
completes on a pool port is a hit from the scanner's address, recorded, and
(not being part of a knock of the scanner's) a failed attempt, so it starts
a lockout of the configured scope.
"""

from __future__ import annotations

import shutil
import subprocess
import xml.etree.ElementTree as ElementTree

from .nsdaemon import DaemonInNamespace

LOW, HIGH = 20000, 20599
RANGE = f"{LOW}-{HIGH}"


def nmap_command(target: str, *timing: str) -> list[str]:
    nmap = shutil.which("nmap")
    if nmap is None:
        raise AssertionError("nmap is not installed (apt-get install nmap; tests/run.sh does)")
    return [nmap, "-sT", "-Pn", "-n", "--max-retries", "1", *timing, "-p", RANGE,
            "-oX", "-", target]


def ports_by_state(xml: str) -> tuple[dict[int, tuple[str, str]], dict[str, int]]:
    """
    From nmap's XML: port -> (state, reason) for the ports it lists, and
    state -> count for the ones it sums up ("extraports").
    """
    root = ElementTree.fromstring(xml)
    hosts = root.findall("host")
    if len(hosts) != 1:
        raise AssertionError(f"nmap reported {len(hosts)} hosts:\n{xml}")
    listed = {
        int(port.get("portid")): (port.find("state").get("state"),
                                  port.find("state").get("reason"))
        for port in hosts[0].iter("port")
    }
    summed = {extra.get("state"): int(extra.get("count"))
              for extra in hosts[0].iter("extraports")}
    return listed, summed


class ScanTests(DaemonInNamespace):
    def scan(self, *timing: str) -> str:
        result = self.net.run("attacker", nmap_command(self.server_address(), *timing),
                              timeout=90)
        return result.stdout

    def assertScanShowsThePool(self, xml: str, pool: list[int], knocks: list[list[int]]) -> None:
        listed, summed = ports_by_state(xml)
        open_ports = {port for port, (state, _) in listed.items() if state == "open"}
        self.assertEqual(open_ports, set(pool), "the open ports are exactly the pool")
        self.assertEqual(set(listed), set(pool), f"nmap listed other ports: {listed}")
        self.assertEqual(summed, {"closed": HIGH - LOW + 1 - len(pool)})
        # knock ports and decoys: one and the same state, for the same reason
        looks = {listed[port] for port in pool}
        self.assertEqual(len(looks), 1, looks)
        for knock in knocks:
            self.assertEqual({listed[port] for port in knock}, looks)

    def attacker_hits(self) -> list[dict]:
        attacker = self.net.address4["attacker"]
        return [e for e in self.audit("hit") if e["ip"] == attacker]

    def test_scan_sees_the_pool_and_locks_everyone_out(self) -> None:
        """
        lockout-scope = global: while the client holds knock 1, a full
        scan of the pool range shows the whole pool open, knock 1 and knock
        2 no different from decoys; its first hit on a pool port locks
        everyone out, ending the client's slot (FAIL locked-out), and the
        client's next knock gets LOCKED (exit 5).
        """
        self.start_server(lockout_scope="global")
        pool = self.status()["pool"]
        held = self.hold()
        self.assertEqual(held.index, 1, held.first)
        xml = self.scan("-T4")
        self.assertScanShowsThePool(xml, pool, [held.ports, self.knock_ports(2)])
        self.assertEqual(held.verdict("wait"), "FAIL locked-out")
        self.wait_until(lambda: {e["port"] for e in self.attacker_hits()} == set(pool), 10,
                        "every pool port's hit from the attacker in the audit log")
        hits = self.attacker_hits()
        self.assertEqual(len(hits), len(pool), "one connection, one hit")
        self.assertEqual(hits[0]["outcome"], "no-slot")
        self.assertEqual({e["outcome"] for e in hits[1:]}, {"locked"})
        attacker = self.net.address4["attacker"]
        self.assertEqual(
            [(e["ip"], e["scope"], e["reason"]) for e in self.audit("lockout")],
            [(attacker, "global", "no-slot")],
            "one lockout: hits during a lockout do not extend it",
        )
        self.assertEqual([(e["index"], e["reason"]) for e in self.audit("fail")],
                         [(1, "locked-out")])
        result = self.knock()
        self.assertEqual(result.returncode, 5, result.stdout + result.stderr)
        self.assertIn("LOCKED", result.stderr)
        self.assertEqual(list(self.status()["lockouts"]), ["*"])
        self.assertEqual(self.audit("open"), [])

    def test_scan_locks_only_the_scanner(self) -> None:
        """
        lockout-scope = source: a slow scan runs; while it runs the client
        knocks and gets OPEN; the scan still sees the whole pool, its hits
        are logged from the attacker's address, and only that address is
        locked out (a knock from it, even with alice's file, gets LOCKED).
        """
        self.start_server(lockout_scope="source", max_concurrent=1)
        pool = self.status()["pool"]
        scanner = self.net.spawn(
            "attacker",
            nmap_command(self.server_address(), "--max-rate", "150"),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.wait_until(lambda: self.attacker_hits(), 30, "the scan's first hit")
        result = self.knock()
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr + self.daemon_tail())
        self.assertIn("OPEN", result.stdout)
        self.assertIsNone(scanner.poll(), "the scan ended before the knock; it proves nothing")
        try:
            xml, errors = scanner.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.fail("nmap did not finish within 60 s")
        self.assertEqual(scanner.returncode, 0, errors)
        self.assertScanShowsThePool(xml, pool, [self.knock_ports(1), self.knock_ports(2)])

        attacker, client = self.net.address4["attacker"], self.net.address4["client"]
        self.wait_until(lambda: {e["port"] for e in self.attacker_hits()} == set(pool), 10,
                        "every pool port's hit from the attacker in the audit log")
        opened = self.audit("open")
        self.assertEqual([(e["ip"], e["index"]) for e in opened], [(client, 1)])
        self.assertTrue(any(e["time"] > opened[0]["time"] for e in self.attacker_hits()),
                        "no scan hit after the client's OPEN: the knock was not during the scan")
        self.assertEqual(
            [(e["ip"], e["scope"]) for e in self.audit("lockout")], [(attacker, "source")]
        )
        client_hits = [e for e in self.audit("hit") if e["ip"] == client]
        self.assertEqual([e["port"] for e in client_hits], self.knock_ports(1))
        self.assertEqual(self.audit("fail"), [])
        # Source lockouts live in the daemon's memory (not the state): the
        # attacker's own knock shows it is locked out.
        from_attacker = self.knock("attacker")
        self.assertEqual(from_attacker.returncode, 5, from_attacker.stdout + from_attacker.stderr)
        self.assertEqual([e["ip"] for e in self.audit("locked")], [attacker])
