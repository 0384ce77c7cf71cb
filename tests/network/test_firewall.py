"""
The nftables scripts in etc/scripts, for real, inside network namespaces.

The server namespace loads the base ruleset (protected port 2222) and runs a
listener on 2222 (protected) and 8080 (not protected); the client and the
attacker namespaces try to connect. A dropped connection attempt gives up
after CONNECT_TIMEOUT seconds.

AddressCheckTests need neither root nor nftables: they hold the scripts'
address check against Python's ipaddress module.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
import time

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SkipTest, TestCase

from . import netns

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "etc", "scripts")
KNOCKER_NFT = os.path.join(SCRIPTS, "knocker-nft")
NFT_SETUP = os.path.join(SCRIPTS, "nft-setup")
NFT_OPEN = os.path.join(SCRIPTS, "nft-open")
NFT_CLOSE = os.path.join(SCRIPTS, "nft-close")

PROTECTED = 2222
UNPROTECTED = 8080
CONNECT_TIMEOUT = 1.0

#: Variables the scripts read; cleared so the caller's environment cannot
#: change what a test sees.
SCRIPT_ENV = {
    "KNOCKER_PROTECTED_PORTS": str(PROTECTED),
    "KNOCKER_NFT_TABLE": "knocker",
    "KNOCKER_NFT_TIMEOUT": "",
    "KNOCKER_NFT": "",
}
#: knocker's own variables: never inherited from the caller.
UNSET = ("KNOCKER_CLIENT_IP", "KNOCKER_CLIENT", "KNOCKER_INDEX")


class FirewallTestCase(TestCase):
    """
    Namespaces built, base ruleset loaded, listeners running.
    """

    def setUp(self) -> None:
        ok, reason = netns.available(need_nft=True)
        if not ok:
            raise SkipTest(reason)
        self.net = netns.Topology()
        self.addCleanup(self.net.destroy)
        self.net.create()
        self.server4 = self.net.address4["server"]
        self.server6 = self.net.address6["server"]
        self.client4 = self.net.address4["client"]
        self.client6 = self.net.address6["client"]
        self.attacker4 = self.net.address4["attacker"]
        self.attacker6 = self.net.address6["attacker"]
        self.net.listen("server", PROTECTED)
        self.net.listen("server", UNPROTECTED)
        result = self.script(NFT_SETUP)
        self.assertEqual(result.returncode, 0, result.stderr)

    def script(self, path: str, *args: str, env: dict | None = None):
        """
        Run one of the scripts in the server namespace (never through a shell).
        """
        full_env = dict(SCRIPT_ENV)
        full_env.update(env or {})
        return self.net.run(
            "server", [path, *args], env=full_env, unset=UNSET, check=False
        )

    def assertOpens(self, path: str, *args: str, env: dict | None = None) -> None:
        result = self.script(path, *args, env=env)
        self.assertEqual(
            (result.returncode, result.stderr), (0, ""), f"{path} {args}: {result.stdout}"
        )

    def connect(self, role: str, host: str, port: int = PROTECTED) -> str:
        return self.net.connect(role, host, port, timeout=CONNECT_TIMEOUT)

    def elements(self, name: str) -> dict:
        """
        The elements of set C{name}: address -> comment ("" when none).
        """
        result = self.net.run(
            "server", [self.net.nft, "-j", "list", "set", "inet", "knocker", name]
        )
        found = {}
        for item in json.loads(result.stdout)["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                if isinstance(element, dict):
                    element = element["elem"]
                    value, comment = element["val"], element.get("comment", "")
                else:
                    value, comment = element, ""
                found[ipaddress.ip_address(value)] = comment
        return found

    def ruleset(self) -> str:
        # -s: no counters, so only real changes show
        return self.net.run("server", [self.net.nft, "-s", "list", "ruleset"]).stdout


class ClosedByDefaultTests(FirewallTestCase):
    def test_protected_port_drops_everyone(self) -> None:
        """
        Without a knock, neither client nor attacker gets a connection to the
        protected port, over IPv4 or IPv6: the attempt times out (dropped,
        not refused).
        """
        for role in ("client", "attacker"):
            self.assertEqual(self.connect(role, self.server4), "timeout")
            self.assertEqual(self.connect(role, self.server6), "timeout")

    def test_other_ports_untouched(self) -> None:
        """
        A port that is not protected answers as before, so the drops above
        come from the ruleset, not from a broken network.
        """
        self.assertEqual(self.connect("client", self.server4, UNPROTECTED), "ok")
        self.assertEqual(self.connect("attacker", self.server6, UNPROTECTED), "ok")

    def test_loopback_untouched(self) -> None:
        """
        Connections from the server to itself over lo are not filtered.
        """
        self.assertEqual(self.connect("server", "127.0.0.1"), "ok")
        self.assertEqual(self.connect("server", "::1"), "ok")

    def test_setup_twice(self) -> None:
        """
        Loading the base ruleset again changes nothing.
        """
        before = self.ruleset()
        self.assertOpens(NFT_SETUP)
        self.assertEqual(self.ruleset(), before)

    def test_open_without_setup(self) -> None:
        """
        Without the table, nft-open fails (status 3) and says to run nft-setup.
        """
        result = self.script(KNOCKER_NFT, "remove")
        self.assertEqual(result.returncode, 0, result.stderr)
        result = self.script(NFT_OPEN, self.client4, "alice", "1")
        self.assertEqual(result.returncode, 3)
        self.assertIn("nft-setup", result.stderr)
        self.assertEqual(self.ruleset().strip(), "")


class OpenCloseTests(FirewallTestCase):
    def test_open_lets_in_only_the_knocker(self) -> None:
        """
        nft-open CLIENT-IP lets exactly that address connect.
        """
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1")
        self.assertEqual(self.connect("client", self.server4), "ok")
        self.assertEqual(self.connect("attacker", self.server4), "timeout")
        # only the address given, only in its family
        self.assertEqual(self.connect("client", self.server6), "timeout")
        self.assertEqual(
            self.elements("allowed_v4"),
            {ipaddress.ip_address(self.client4): "knocker alice #1"},
        )
        self.assertEqual(self.elements("allowed_v6"), {})

    def test_open_twice_is_one_element(self) -> None:
        """
        Opening the same address twice succeeds and leaves one element,
        carrying the comment of the latest knock.
        """
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1")
        self.assertOpens(NFT_OPEN, self.client4, "alice", "2")
        self.assertEqual(
            self.elements("allowed_v4"),
            {ipaddress.ip_address(self.client4): "knocker alice #2"},
        )
        self.assertEqual(self.connect("client", self.server4), "ok")

    def test_close(self) -> None:
        """
        nft-close takes the address out again; closing twice, or closing an
        address never opened, succeeds.
        """
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1")
        self.assertOpens(NFT_OPEN, self.attacker4, "mallory", "5")
        self.assertEqual(self.connect("client", self.server4), "ok")
        self.assertOpens(NFT_CLOSE, self.client4, "alice", "1")
        self.assertEqual(self.connect("client", self.server4), "timeout")
        self.assertEqual(
            self.elements("allowed_v4"),
            {ipaddress.ip_address(self.attacker4): "knocker mallory #5"},
        )
        self.assertOpens(NFT_CLOSE, self.client4, "alice", "1")
        self.assertOpens(NFT_CLOSE, "10.231.0.77", "nobody", "3")
        self.assertOpens(NFT_CLOSE, self.client6, "alice", "1")
        self.assertEqual(set(self.elements("allowed_v4")), {ipaddress.ip_address(self.attacker4)})
        self.assertEqual(self.connect("attacker", self.server4), "ok")

    def test_established_connection_survives_close(self) -> None:
        """
        Closing stops new connections, not one already made.
        """
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1")
        session = self.net.spawn(
            "client",
            [sys.executable, netns.PROBE, "session", self.server4, str(PROTECTED), "2"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.assertEqual(netns.read_line(session, 5).strip(), "ok")
        self.assertOpens(NFT_CLOSE, self.client4, "alice", "1")
        self.assertEqual(self.connect("client", self.server4), "timeout")
        session.stdin.write("go\n")
        session.stdin.flush()
        self.assertEqual(netns.read_line(session, 5).strip(), "echo ok")

    def test_environment(self) -> None:
        """
        With no arguments the scripts read knocker's environment variables.
        """
        env = {"KNOCKER_CLIENT_IP": self.client4, "KNOCKER_CLIENT": "alice",
               "KNOCKER_INDEX": "7"}
        self.assertOpens(NFT_OPEN, env=env)
        self.assertEqual(
            self.elements("allowed_v4"),
            {ipaddress.ip_address(self.client4): "knocker alice #7"},
        )
        self.assertOpens(NFT_CLOSE, env=env)
        self.assertEqual(self.elements("allowed_v4"), {})

    def test_arguments_before_environment(self) -> None:
        """
        An address given as argument wins over KNOCKER_CLIENT_IP.
        """
        env = {"KNOCKER_CLIENT_IP": self.attacker4}
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1", env=env)
        self.assertEqual(set(self.elements("allowed_v4")), {ipaddress.ip_address(self.client4)})

    def test_ipv6(self) -> None:
        """
        An IPv6 address goes to the IPv6 set and works the same way.
        """
        self.assertOpens(NFT_OPEN, self.client6, "alice", "1")
        self.assertEqual(
            self.elements("allowed_v6"),
            {ipaddress.ip_address(self.client6): "knocker alice #1"},
        )
        self.assertEqual(self.elements("allowed_v4"), {})
        self.assertEqual(self.connect("client", self.server6), "ok")
        self.assertEqual(self.connect("client", self.server4), "timeout")
        self.assertEqual(self.connect("attacker", self.server6), "timeout")
        # another spelling of the same address is the same element
        spelling = ipaddress.ip_address(self.client6).exploded.upper()
        self.assertOpens(NFT_OPEN, spelling, "alice", "2")
        self.assertEqual(len(self.elements("allowed_v6")), 1)
        self.assertOpens(NFT_CLOSE, self.client6, "alice", "1")
        self.assertEqual(self.elements("allowed_v6"), {})
        self.assertEqual(self.connect("client", self.server6), "timeout")

    def test_ipv4_mapped(self) -> None:
        """
        An IPv4-mapped IPv6 address is the IPv4 address.
        """
        self.assertOpens(NFT_OPEN, "::ffff:" + self.client4, "alice", "1")
        self.assertEqual(set(self.elements("allowed_v4")), {ipaddress.ip_address(self.client4)})
        self.assertEqual(self.elements("allowed_v6"), {})
        self.assertEqual(self.connect("client", self.server4), "ok")
        self.assertOpens(NFT_CLOSE, "::ffff:" + self.client4, "alice", "1")
        self.assertEqual(self.elements("allowed_v4"), {})

    def test_timeout(self) -> None:
        """
        With KNOCKER_NFT_TIMEOUT the address expires on its own.
        """
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1", env={"KNOCKER_NFT_TIMEOUT": "1"})
        self.assertEqual(set(self.elements("allowed_v4")), {ipaddress.ip_address(self.client4)})
        deadline = time.monotonic() + 5
        while self.elements("allowed_v4") and time.monotonic() < deadline:
            time.sleep(0.2)
        self.assertEqual(self.elements("allowed_v4"), {})
        self.assertEqual(self.connect("client", self.server4), "timeout")

    def test_setup_again_keeps_addresses(self) -> None:
        """
        Reloading the base ruleset with other ports keeps the addresses let
        in and protects the new ports.
        """
        self.assertOpens(NFT_OPEN, self.client4, "alice", "1")
        self.assertOpens(
            NFT_SETUP, env={"KNOCKER_PROTECTED_PORTS": f"{PROTECTED},{UNPROTECTED}"}
        )
        self.assertEqual(set(self.elements("allowed_v4")), {ipaddress.ip_address(self.client4)})
        self.assertEqual(self.connect("client", self.server4, UNPROTECTED), "ok")
        self.assertEqual(self.connect("attacker", self.server4, UNPROTECTED), "timeout")


#: Arguments the scripts must refuse, with status 2 and no change.
BAD_ARGUMENTS = [
    ["1.2.3.4; rm -rf /"],
    ["10.231.0.2; touch {marker}"],
    ["$(touch {marker})"],
    ["`touch {marker}`"],
    [""],
    ["999.1.1.1"],
    ["10.231.0.256"],
    ["010.231.0.2"],
    ["10.231.0"],
    ["10.231.0.2.5"],
    ["10.231.0.2/32"],
    ["10.231.0.0/24"],
    ["localhost"],
    ["knock.test"],
    [" 10.231.0.2"],
    ["10.231.0.2\n"],
    ["10.231.0.2,10.231.0.3"],
    ["10.231.0.2 10.231.0.3"],
    ["{ 10.231.0.2 }"],
    ["0.0.0.0"],
    ["255.255.255.255"],
    ["224.0.0.1"],
    ["::"],
    ["ff02::1"],
    ["fe80::1%eth0"],
    ["fd00:6b6e:6f63::2/128"],
    ["1:2:3:4:5:6:7:8:9"],
    ["1::2::3"],
    ["::ffff:999.1.1.1"],
    ["-h"],
    ["--", "10.231.0.2"],
    ["10.231.0.2", "Alice", "1"],
    ["10.231.0.2", "alice; rm", "1"],
    ["10.231.0.2", "alice", "0"],
    ["10.231.0.2", "alice", "1; rm"],
    ["10.231.0.2", "alice", "-1"],
    ["10.231.0.2", "alice", "1", "extra"],
    [],
]


class RefusalTests(FirewallTestCase):
    def test_bad_arguments(self) -> None:
        """
        Anything but one well-formed address (and, when given, a client id
        and a positive knock number) is refused with status 2 and a message,
        and the ruleset stays as it was. Nothing is ever run by a shell.
        """
        self.assertOpens(NFT_OPEN, self.attacker4, "mallory", "1")
        before = self.ruleset()
        marker_dir = tempfile.mkdtemp()
        self.addCleanup(os.rmdir, marker_dir)
        marker = os.path.join(marker_dir, "ran")
        for path in (NFT_OPEN, NFT_CLOSE):
            for args in BAD_ARGUMENTS:
                args = [a.replace("{marker}", marker) for a in args]
                result = self.script(path, *args)
                what = f"{os.path.basename(path)} {args!r}: {result.stdout!r}"
                self.assertEqual(result.returncode, 2, what)
                self.assertTrue(result.stderr.strip(), what)
                self.assertEqual(result.stdout, "", what)
        self.assertEqual(self.ruleset(), before)
        self.assertFalse(os.path.exists(marker))

    def test_bad_settings(self) -> None:
        """
        Bad values of the settings are refused with status 2.
        """
        before = self.ruleset()
        for port_list in ("0", "65536", "22;drop", " ", ",", "22-", "30-20", "http"):
            result = self.script(NFT_SETUP, env={"KNOCKER_PROTECTED_PORTS": port_list})
            self.assertEqual(result.returncode, 2, port_list)
            self.assertIn("KNOCKER_PROTECTED_PORTS", result.stderr)
        for table in ("x y", "knocker;", "1abc", "-t"):
            result = self.script(NFT_OPEN, self.client4, env={"KNOCKER_NFT_TABLE": table})
            self.assertEqual(result.returncode, 2, table)
        for timeout in ("0", "1 h", "1w", "-5", "1h;", "60s 1"):
            result = self.script(NFT_OPEN, self.client4, env={"KNOCKER_NFT_TIMEOUT": timeout})
            self.assertEqual(result.returncode, 2, timeout)
            self.assertIn("KNOCKER_NFT_TIMEOUT", result.stderr)
        self.assertEqual(self.ruleset(), before)


def expected(text: str):
    """
    What the scripts should make of C{text}: the address, or None to refuse.
    """
    if not text or set(text) - set("0123456789abcdefABCDEF:."):
        return None  # also refuses zone ids (fe80::1%eth0), unlike ipaddress
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_unspecified or address.is_multicast:
        return None
    if address.version == 4 and address in ipaddress.ip_network("240.0.0.0/4"):
        return None
    return address


def check(texts: list[str]) -> list:
    """
    Run "knocker-nft check" on C{texts}: the address or None, for each.
    """
    result = subprocess.run(
        ["bash", KNOCKER_NFT, "check", *texts],
        capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(texts), (texts, lines)
    return [ipaddress.ip_address(line[3:]) if line.startswith("ok ") else None
            for line in lines]


def _v6_spellings(address: ipaddress.IPv6Address):
    exploded = address.exploded.split(":")
    last32 = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return st.sampled_from([
        str(address),
        address.exploded,
        address.exploded.upper(),
        ":".join(group.lstrip("0") or "0" for group in exploded),
        ":".join(exploded[:6]) + ":" + str(last32),
        str(address).rsplit(":", 2)[0] + ":" + str(last32)
        if str(address).count(":") >= 2 else str(address),
    ])


def _mutations(text: str):
    """
    Small edits of a valid address: mostly invalid, sometimes still valid.
    """
    return st.one_of(
        st.tuples(st.integers(0, len(text)), st.sampled_from(list(":.0f9%/ xG"))).map(
            lambda edit: text[: edit[0]] + edit[1] + text[edit[0]:]
        ),
        st.integers(0, max(len(text) - 1, 0)).map(lambda i: text[:i] + text[i + 1:]),
    )


_v4 = st.ip_addresses(v=4).map(str)
_v6 = st.ip_addresses(v=6).flatmap(_v6_spellings)
_mapped = st.ip_addresses(v=4).map(lambda a: f"::ffff:{a}")
_noise = st.text(alphabet="0123456789abcdefABCDEF:.%/ -xg", max_size=45)
address_texts = st.one_of(
    _v4, _v6, _mapped, _noise,
    st.one_of(_v4, _v6).flatmap(_mutations),
)


class AddressCheckTests(TestCase):
    """
    The scripts' address check agrees with Python's ipaddress module (less
    the addresses no TCP client can have). Needs only bash.
    """

    def test_examples(self) -> None:
        texts = [
            "10.231.0.2", "0.0.0.0", "255.255.255.255", "239.1.2.3", "223.255.255.255",
            "01.2.3.4", "1.2.3.04", "1.2.3", "1.2.3.4.5", "256.1.1.1", "1.2.3.4 ",
            "::1", "::", "1::", "::2:3:4:5:6:7:8", "1:2:3:4:5:6:7::", "1:2:3:4:5:6:7:8::",
            "::ffff:10.0.0.1", "::ffff:a00:1", "::10.0.0.1", "64:ff9b::1.2.3.4",
            "1:2:3:4:5:6:1.2.3.4", "1:2:3:4:5:6:7:1.2.3.4", "fe80::1%eth0", "FD00::A",
            "12345::", "1:::2", ":1:2:3:4:5:6:7", "1:2:3:4:5:6:7:", "ff00::", "feff::",
            "::ffff:0.0.0.0", "::ffff:224.0.0.1", "::1.2.3.04", "", ".", ":", ":::",
        ]
        for text, got in zip(texts, check(texts), strict=True):
            self.assertEqual(got, expected(text), repr(text))

    @settings(max_examples=60, deadline=None)
    @given(st.lists(address_texts, min_size=1, max_size=40))
    def test_agrees_with_ipaddress(self, texts: list[str]) -> None:
        self.assertEqual(check(texts), [expected(t) for t in texts])
