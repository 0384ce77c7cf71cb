"""
How the nftables scripts in etc/scripts find their parts, as an
administrator installs them: nft-open and its kin find knocker-nft beside
the path they were run by, or through a link; knocker-nft finds nft on
PATH, in order.  No nftables needed: a stand-in nft records what it is
asked (the real thing is in tests/network/test_firewall.py).

Then, with nftables in a network namespace of their own (root only): the
list of protected ports (overlaps refused, the check holding the set to it)
and nft's own errors passed on.
"""

import json
import os
import secrets
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from tests.network import netns

SCRIPTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "etc", "scripts")

STAND_IN = """#!/bin/sh
printf '%s|' "$0" "$@" >> "$NFT_CALLS"
echo >> "$NFT_CALLS"
"""


class ScriptLookupTests(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.calls = os.path.join(self.dir, "calls")

    def stand_in(self, folder: str) -> str:
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, "nft")
        with open(path, "w") as handle:
            handle.write(STAND_IN)
        os.chmod(path, 0o755)
        return path

    def run_script(self, path: str, *args: str, search: str):
        env = {"PATH": search, "NFT_CALLS": self.calls, "KNOCKER_NFT": "",
               "KNOCKER_NFT_TABLE": "knocker", "KNOCKER_NFT_TIMEOUT": ""}
        return subprocess.run([path, *args], env=env, capture_output=True, text=True,
                              timeout=30, cwd=self.dir)

    def called(self) -> list[list[str]]:
        with open(self.calls) as handle:
            return [line.rstrip("|\n").split("|") for line in handle if line.strip()]

    def test_open_beside_its_helper(self):
        nft = self.stand_in(os.path.join(self.dir, "bin"))
        done = self.run_script(os.path.join(SCRIPTS, "nft-open"), "192.0.2.7", "alice", "3",
                               search=f"{os.path.dirname(nft)}:/usr/bin:/bin")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.called(), [[nft, "create", "element", "inet", "knocker",
                                          "allowed_v4", '{ 192.0.2.7 comment "knocker alice #3" }']])

    def test_open_through_a_link_elsewhere(self):
        """
        A link to nft-open in another folder (one without knocker-nft)
        still finds the helper where the link points.
        """
        links = os.path.join(self.dir, "links")
        os.makedirs(links)
        for name in ("nft-open", "nft-close"):
            os.symlink(os.path.join(SCRIPTS, name), os.path.join(links, name))
        nft = self.stand_in(os.path.join(self.dir, "bin"))
        search = f"{os.path.dirname(nft)}:/usr/bin:/bin"
        done = self.run_script(os.path.join(links, "nft-open"), "192.0.2.7", search=search)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.called()[0][:2], [nft, "create"])

    def test_a_folder_named_like_the_helper_is_passed_over(self):
        links = os.path.join(self.dir, "links")
        os.makedirs(os.path.join(links, "knocker-nft"))
        os.symlink(os.path.join(SCRIPTS, "nft-open"), os.path.join(links, "nft-open"))
        nft = self.stand_in(os.path.join(self.dir, "bin"))
        done = self.run_script(os.path.join(links, "nft-open"), "192.0.2.7",
                               search=f"{os.path.dirname(nft)}:/usr/bin:/bin")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.called()[0][:2], [nft, "create"])

    def test_a_copy_without_its_helper_fails_naming_it(self):
        alone = os.path.join(self.dir, "alone")
        os.makedirs(alone)
        shutil.copy(os.path.join(SCRIPTS, "nft-open"), alone)
        done = self.run_script(os.path.join(alone, "nft-open"), "192.0.2.7",
                               search="/usr/bin:/bin")
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("knocker-nft", done.stderr)

    def test_nft_is_the_first_program_on_path_in_an_absolute_folder(self):
        os.makedirs(os.path.join(self.dir, "relative"))
        self.stand_in(os.path.join(self.dir, "relative"))
        first = self.stand_in(os.path.join(self.dir, "first"))
        self.stand_in(os.path.join(self.dir, "second"))
        os.makedirs(os.path.join(self.dir, "folder", "nft"))  # a folder, not a program
        search = ":".join(["relative", "", os.path.join(self.dir, "folder"),
                           os.path.dirname(first),
                           os.path.join(self.dir, "second"), "/usr/bin", "/bin"])
        done = self.run_script(os.path.join(SCRIPTS, "nft-open"), "192.0.2.7", search=search)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual([call[0] for call in self.called()], [first])


def _program(name: str) -> str | None:
    return shutil.which(name) or next(
        (path for path in (f"/usr/sbin/{name}", f"/sbin/{name}") if os.access(path, os.X_OK)), None)


class NamespaceTestCase(SynchronousTestCase):
    """
    The scripts for real, against nftables in a network namespace of the
    test's own (the host's ruleset is never touched), as root runs them.
    """

    def setUp(self):
        ok, reason = netns.available(need_nft=True)
        if not ok:
            raise SkipTest(reason)
        self.ip, self.nft = _program("ip"), _program("nft")
        self.ns = f"{netns.PREFIX}-{os.getpid()}-{secrets.token_hex(4)}-scripts"
        subprocess.run([self.ip, "netns", "add", self.ns], check=True, capture_output=True,
                       timeout=30)
        self.addCleanup(subprocess.run, [self.ip, "netns", "del", self.ns],
                        capture_output=True, timeout=30)

    def script(self, name: str, *args: str, ports: str | None = "22,2222",
               wrapper: tuple[str, ...] = (), path_first: str | None = None):
        """
        etc/scripts/NAME in the namespace, with knocker.env's settings and
        C{ports} as KNOCKER_PROTECTED_PORTS (None: unset, as by hand);
        C{path_first} goes before the usual folders on PATH.
        """
        search = "/usr/sbin:/usr/bin:/sbin:/bin"
        env = {"PATH": search if path_first is None else f"{path_first}:{search}",
               "KNOCKER_NFT_TABLE": "knocker", "KNOCKER_NFT_TIMEOUT": "", "KNOCKER_NFT": ""}
        if ports is not None:
            env["KNOCKER_PROTECTED_PORTS"] = ports
        return subprocess.run([self.ip, "netns", "exec", self.ns, *wrapper,
                               os.path.join(SCRIPTS, name), *args],
                              env=env, capture_output=True, text=True, timeout=30,
                              stdin=subprocess.DEVNULL)

    def nft_run(self, *args: str) -> str:
        done = subprocess.run([self.ip, "netns", "exec", self.ns, self.nft, *args],
                              capture_output=True, text=True, timeout=30, check=True)
        return done.stdout

    def ruleset(self) -> str:
        return self.nft_run("-s", "list", "ruleset")

    def elements(self, name: str) -> list:
        """
        What set C{name} holds, as nft reports it: 22, [6000, 6010],
        "192.0.2.7" (comments left out).
        """
        found = []
        for item in json.loads(self.nft_run("-j", "list", "set", "inet", "knocker",
                                            name))["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                if isinstance(element, dict) and "elem" in element:
                    element = element["elem"]["val"]
                found.append(element["range"] if isinstance(element, dict) else element)
        return found

    def loaded(self, ports: str = "22,2222") -> None:
        done = self.script("nft-setup", ports=ports)
        self.assertEqual(done.returncode, 0, done.stderr)


class PortListTests(NamespaceTestCase):
    def test_overlapping_ports_are_refused_before_nft(self):
        """
        Ports given twice or inside a range are refused with status 2 and a
        message naming both items; the table in place stays as it was (nft
        would refuse them too, halfway through, and leave no table at boot).
        """
        self.loaded()
        before = self.ruleset()
        for ports, named in (("22 2200-2300 2222", '"2200-2300" and "2222"'),
                             ("22,22", '"22" and "22"'),
                             ("6000-6010,22,6010-6020", '"6000-6010" and "6010-6020"'),
                             ("22-22 22", '"22-22" and "22"')):
            for name in ("nft-setup", "nft-check"):
                done = self.script(name, ports=ports)
                self.assertEqual(done.returncode, 2, f"{name} {ports}: {done.stdout}{done.stderr}")
                self.assertIn(named, done.stderr)
                self.assertIn("overlap", done.stderr)
                self.assertEqual(self.ruleset(), before, ports)

    def test_check_puts_back_the_ports_a_setup_by_hand_changed(self):
        """
        nft-setup run by hand without knocker.env guards port 22 alone; the
        daemon's check (nft-check, with knocker.env) puts the configured
        ports back and exits 10, keeping the addresses let in.  So does it
        after the set is edited with nft.
        """
        self.loaded("22,2222")
        done = self.script("nft-open", "192.0.2.7")
        self.assertEqual(done.returncode, 0, done.stderr)
        done = self.script("nft-setup", ports=None)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.elements("protected_ports"), [22])
        for change, said in (
                (None, 'guarded ports "22" instead of KNOCKER_PROTECTED_PORTS'),
                (["delete", "element", "inet", "knocker", "protected_ports", "{ 2222 }"],
                 'guarded ports "22" instead of KNOCKER_PROTECTED_PORTS'),
                (["add", "element", "inet", "knocker", "protected_ports", "{ 8080 }"],
                 'guarded ports "22, 2222, 8080" instead of KNOCKER_PROTECTED_PORTS'),
                (["flush", "set", "inet", "knocker", "protected_ports"], "guarded no port")):
            if change:
                self.nft_run(*change)
            done = self.script("nft-check", ports="22,2222")
            self.assertEqual(done.returncode, 10, f"{change}: {done.stdout}{done.stderr}")
            self.assertIn(said, done.stdout)
            self.assertIn("loaded again; protected ports: 22, 2222", done.stdout)
            self.assertEqual(self.elements("protected_ports"), [22, 2222], change)
            self.assertEqual(self.elements("allowed_v4"), ["192.0.2.7"], change)
        done = self.script("nft-check", ports="22,2222")
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "", ""))

    def test_a_check_without_the_ports_set_never_shrinks_the_list(self):
        """
        A daemon started without knocker.env (by hand, or an action-env
        that leaves KNOCKER_PROTECTED_PORTS out) runs nft-check without the
        ports: the default 22 must not replace a longer list, which would
        open the others.
        """
        self.loaded("22,2222")
        done = self.script("nft-check", ports=None)
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "", ""))
        self.assertEqual(self.elements("protected_ports"), [22, 2222])
        # A rule gone: loaded again, guarding what it guarded, not 22 alone.
        self.nft_run("flush", "chain", "inet", "knocker", "input")
        done = self.script("nft-check", ports=None)
        self.assertEqual(done.returncode, 10, done.stdout + done.stderr)
        self.assertEqual(self.elements("protected_ports"), [22, 2222])
        # The set emptied: nothing is guarded, which is never in place, and
        # nothing tells the ports: 22 guarded again, and an error said.
        self.nft_run("flush", "set", "inet", "knocker", "protected_ports")
        done = self.script("nft-check", ports=None)
        self.assertEqual(done.returncode, 10, done.stdout + done.stderr)
        self.assertIn("guarded no port and KNOCKER_PROTECTED_PORTS is not set", done.stderr)
        self.assertEqual(self.elements("protected_ports"), [22])

    def test_check_is_silent_on_a_long_list_in_any_order(self):
        """
        The configured ports in place, however they were written (unordered,
        ranges, more than nft shows on one line), are in place for the check:
        it changes nothing and says nothing, so the daemon does not reload
        every check-interval.
        """
        ports = "6000-6010 443 22 " + ",".join(str(port) for port in range(140, 99, -1))
        self.loaded(ports)
        self.assertEqual(self.elements("protected_ports"),
                         [22, *range(100, 141), 443, [6000, 6010]])
        before = self.ruleset()
        done = self.script("nft-check", ports=ports)
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "", ""))
        self.assertEqual(self.ruleset(), before)


class CheckTests(NamespaceTestCase):
    """
    What the daemon's check (nft-check) takes for a table in place, and
    what it does when it cannot know the ports.
    """

    def test_a_dormant_table_or_a_changed_chain_is_loaded_again(self):
        """
        Every set and every "accept" and "drop" still in the listing, but
        the table switched off, or a rule put before the drop, or the drop
        gone (with another drop elsewhere): not in place; loaded again
        (exit 10), the addresses let in kept.
        """
        self.loaded()
        self.assertEqual(self.script("nft-open", "192.0.2.7").returncode, 0)
        table = ("inet", "knocker")
        rules = ['iif "lo" accept', "ct state established,related accept",
                 "ip saddr @allowed_v4 accept", "ip6 saddr @allowed_v6 accept"]
        changes = (
            ("dormant", [["add", "table", *table, "{ flags dormant; }"]]),
            ("input chain changed", [["insert", "rule", *table, "input", "accept"]]),
            ("input chain changed",
             [["flush", "chain", *table, "input"]]
             + [["add", "rule", *table, "input", *rule.split()] for rule in rules]
             + [["add", "rule", *table, "input", "tcp", "dport", "@protected_ports",
                 "counter"],
                ["add", "rule", *table, "input", "udp", "dport", "9", "drop"]]),
        )
        for said, commands in changes:
            for command in commands:
                self.nft_run(*command)
            done = self.script("nft-check")
            self.assertEqual(done.returncode, 10, f"{said}: {done.stdout}{done.stderr}")
            self.assertIn(said, done.stdout)
            self.assertEqual(self.elements("allowed_v4"), ["192.0.2.7"], said)
            done = self.script("nft-check")
            self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "", ""), said)
        self.assertNotIn("dormant", self.ruleset())

    def test_a_table_gone_with_no_ports_to_go_by_is_an_error(self):
        """
        Without KNOCKER_PROTECTED_PORTS and with the table gone, nothing
        tells which ports it guarded: it is loaded guarding 22, and the
        check says so as an error (before: not a word, and 2222 open to
        everyone from then on); still exit 10, so the doors come back.
        """
        self.loaded("22,2222")
        self.nft_run("delete", "table", "inet", "knocker")
        done = self.script("nft-check", ports=None)
        self.assertEqual(done.returncode, 10, done.stdout + done.stderr)
        self.assertIn("error: inet knocker was missing or incomplete and KNOCKER_PROTECTED_PORTS "
                      "is not set", done.stderr)
        self.assertEqual(self.elements("protected_ports"), [22])

    def test_fresh_setup_lets_no_address_in(self):
        """
        setup keeps the addresses let in; setup --fresh (the units') empties
        the allowed sets, so one restored from a saved ruleset goes.
        """
        self.loaded()
        for address in ("192.0.2.7", "2001:db8::7"):
            self.assertEqual(self.script("nft-open", address).returncode, 0)
        self.loaded()
        self.assertEqual(self.elements("allowed_v4"), ["192.0.2.7"])
        done = self.script("nft-setup", "--fresh")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("no address let in", done.stdout)
        self.assertEqual((self.elements("allowed_v4"), self.elements("allowed_v6")), ([], []))
        self.assertEqual(self.elements("protected_ports"), [22, 2222])


class NftablesReloadTests(NamespaceTestCase):
    """
    nft-reloaded, which nftables.service runs after loading its ruleset
    (etc/nftables-knocker.conf): the flush removed knocker's table; with
    the daemon's unit not running the table is loaded again, with it
    running the daemon's check is left to do it (doors and all).  A
    stand-in systemctl says whether the unit is active.
    """

    def systemctl(self, active: bool) -> str:
        folder = os.path.abspath(self.mktemp())
        os.makedirs(folder)
        path = os.path.join(folder, "systemctl")
        with open(path, "w") as handle:
            handle.write("#!/bin/sh\n"
                         f'[ "$*" = "is-active --quiet knocker.service" ] && exit '
                         f"{0 if active else 3}\nexit 1\n")
        os.chmod(path, 0o755)
        return folder

    def flushed(self) -> None:
        """What Debian's /etc/nftables.conf does first."""
        self.loaded()
        self.assertIn("table inet knocker", self.ruleset())
        self.nft_run("flush", "ruleset")
        self.assertNotIn("table inet knocker", self.ruleset())

    def test_the_daemon_stopped_the_table_comes_back(self):
        self.flushed()
        done = self.script("nft-reloaded", path_first=self.systemctl(active=False))
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertEqual(self.elements("protected_ports"), [22, 2222])
        self.assertEqual(self.elements("allowed_v4"), [])
        again = self.script("nft-reloaded", path_first=self.systemctl(active=False))
        self.assertEqual(again.returncode, 0, again.stdout + again.stderr)

    def test_the_daemon_running_its_check_does_it(self):
        self.flushed()
        done = self.script("nft-reloaded", path_first=self.systemctl(active=True))
        self.assertEqual((done.returncode, done.stdout, done.stderr), (0, "", ""))
        self.assertNotIn("table inet knocker", self.ruleset(), "left to the daemon's check")
        self.assertEqual(self.script("nft-check").returncode, 10, "which loads it")


class NftErrorTests(NamespaceTestCase):
    def test_without_cap_net_admin_nft_error_is_said(self):
        """
        Without CAP_NET_ADMIN the scripts still fail (open, close, list: 3;
        setup, check: 1) and change nothing, but say nft's own error, not
        that the table is missing.
        """
        if _program("setpriv") is None:
            raise SkipTest("setpriv (util-linux) is not installed")
        self.loaded()
        before = self.ruleset()
        unprivileged = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")
        for args, status in ((["nft-open", "192.0.2.7"], 3), (["nft-close", "192.0.2.7"], 3),
                             (["knocker-nft", "list"], 3), (["nft-setup"], 1),
                             (["nft-check"], 1)):
            done = self.script(*args, wrapper=unprivileged)
            last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ""
            self.assertEqual(done.returncode, status, f"{args}: {done.stderr}")
            self.assertIn("Operation not permitted", last, args)
            self.assertNotIn("not found", done.stderr, args)
        self.assertEqual(self.ruleset(), before)
        self.assertEqual(self.elements("allowed_v4"), [])
