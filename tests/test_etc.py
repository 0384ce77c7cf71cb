"""
The shipped example configurations parse and document every key; the
firewall unit loads the table at boot.
"""

import os
import re
import shutil
import subprocess

from twisted.trial.unittest import SkipTest, SynchronousTestCase

from knocker.core.config import CLIENT_KEYS, load_client_config
from knocker.core.serverconfig import SERVER_KEYS, load_server_config

ETC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "etc")


def documented(path):
    with open(path) as handle:
        return set(re.findall(r"^#? ?([a-z][a-z0-9-]*) = ", handle.read(), re.M))


class ExampleConfigTests(SynchronousTestCase):
    def test_server_example(self):
        path = os.path.join(ETC, "knockserver.conf")
        config = load_server_config(path)
        self.assertEqual((config.pool_size, config.lockout, config.lockout_scope), (100, 60.0, "knock"))
        # It is the installation's file (docs/deploy.md): these keys are set
        # for it; every other value shown is the default.
        installed = {
            "central": "tcp:7000:interface=0.0.0.0",
            "interface": "0.0.0.0",
            "state_dir": "/var/lib/knocker",
            "audit_log": "/var/log/knocker/audit.log",
            "on_success": "/etc/knocker/scripts/nft-open",
            "on_close": "/etc/knocker/scripts/nft-close",
            "on_check": "/etc/knocker/scripts/nft-check",
        }
        self.assertEqual({key: getattr(config, key) for key in installed}, installed)
        self.assertEqual(config, load_server_config(None).replace(**installed),
                         "the example shows the defaults")
        with open(path) as handle:
            text = handle.read()
        self.assertEqual(text.count("\n# Built-in default:"), len(installed))
        self.assertEqual(set(SERVER_KEYS) - documented(path), set())

    def test_the_unit_gives_the_closes_at_stop_their_time(self):
        """
        At stop the daemon runs every pending close, 8 at a time, each
        within script-timeout; systemd's default 90 s would kill it and
        them past 9 rounds, leaving those doors open.  The shipped unit
        allows at least 50 rounds of the shipped script-timeout.
        """
        from knocker.daemon.closes import ACTIONS_AT_ONCE

        with open(os.path.join(ETC, "knocker.service")) as handle:
            found = re.search(r"^TimeoutStopSec=(\d+)min$", handle.read(), re.M)
        self.assertIsNotNone(found, "TimeoutStopSec=<N>min in etc/knocker.service")
        config = load_server_config(os.path.join(ETC, "knockserver.conf"))
        self.assertGreaterEqual(int(found.group(1)) * 60, 50 * config.script_timeout)
        self.assertEqual(ACTIONS_AT_ONCE, 8, "the unit's comment counts 8 at a time")

    def test_client_example(self):
        path = os.path.join(ETC, "knockclient.conf")
        config = load_client_config(path)
        self.assertEqual(config.server, "tcp:host=127.0.0.1:port=7000")
        self.assertEqual(set(CLIENT_KEYS) - documented(path), set())


def unit(name: str) -> dict[str, dict[str, list[str]]]:
    """
    SECTION -> KEY -> every value the key has there (comments left out).
    """
    found: dict[str, dict[str, list[str]]] = {}
    section = found.setdefault("", {})
    with open(os.path.join(ETC, name)) as handle:
        for line in handle:
            line = line.strip()
            if line.startswith("["):
                section = found.setdefault(line.strip("[]"), {})
            elif line and line[0] not in "#;":
                key, _, value = line.partition("=")
                section.setdefault(key.strip(), []).extend(value.split())
    return found


def systemd_verify(case, name: str, installed: dict[str, str], programs: list[str]) -> str:
    """
    C{systemd-analyze verify NAME} in a root holding systemd's own units,
    C{installed} (path in the root -> file of etc/) and a stand-in for each
    of C{programs}: its output, once it has passed.
    """
    analyze = shutil.which("systemd-analyze")
    units = "/usr/lib/systemd/system" if os.path.isdir("/usr/lib/systemd/system") \
        else "/lib/systemd/system"
    if analyze is None or not os.path.isdir(units):
        raise SkipTest("systemd-analyze or systemd's units are not installed")
    root = os.path.abspath(case.mktemp())
    shutil.copytree(units, os.path.join(root, "usr/lib/systemd/system"), symlinks=True)
    if not os.path.exists(os.path.join(root, "usr/lib/systemd/system", name)) and \
            not any(path.endswith(name) for path in installed):
        raise SkipTest(f"{name} is not installed")
    for path, source in installed.items():
        os.makedirs(os.path.dirname(os.path.join(root, path)), exist_ok=True)
        shutil.copy(os.path.join(ETC, source), os.path.join(root, path))
    for path in programs:
        stub = os.path.join(root, path.lstrip("-/"))
        os.makedirs(os.path.dirname(stub), exist_ok=True)
        with open(stub, "w") as handle:
            handle.write("#!/bin/sh\n")
        os.chmod(stub, 0o755)
    done = subprocess.run([analyze, "verify", f"--root={root}", name], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL)
    case.assertEqual(done.returncode, 0, done.stdout + done.stderr)
    return done.stdout + done.stderr


class FirewallUnitTests(SynchronousTestCase):
    """
    etc/knocker-firewall.service: the table loaded at boot, before the
    network and sshd, whatever becomes of the daemon.  systemd does not run
    here: its settings are read as systemd would, and checked with
    systemd-analyze and systemctl --root where they are installed.
    """

    def setUp(self):
        self.firewall = unit("knocker-firewall.service")
        self.daemon = unit("knocker.service")

    def test_runs_the_daemons_setup_with_the_same_settings(self):
        service = self.firewall["Service"]
        self.assertEqual(service["ExecStart"], self.daemon["Service"]["ExecStartPre"])
        self.assertEqual(service["ExecStart"], ["/etc/knocker/scripts/nft-setup", "--fresh"])
        self.assertEqual(service["EnvironmentFile"], self.daemon["Service"]["EnvironmentFile"])
        self.assertEqual((service["Type"], service["RemainAfterExit"]), (["oneshot"], ["yes"]))
        self.assertNotIn("ExecStop", service, "stopping it must not open the ports")
        self.assertNotIn("User", service)

    def test_closes_the_ports_before_the_network_and_sshd(self):
        ordering = self.firewall["Unit"]
        self.assertEqual(ordering["DefaultDependencies"], ["no"])
        self.assertLessEqual({"network-pre.target", "sysinit.target", "ssh.service",
                              "ssh.socket", "knocker.service"}, set(ordering["Before"]))
        self.assertIn("network-pre.target", ordering["Wants"])
        self.assertEqual(ordering["After"], ["nftables.service"])
        self.assertEqual(self.firewall["Install"]["WantedBy"], ["sysinit.target"])

    def test_enabling_the_daemon_enables_it(self):
        """
        `systemctl enable knocker`, as README's setup runs it, also enables
        the firewall unit, and starting the daemon starts it.
        """
        systemctl = shutil.which("systemctl")
        if systemctl is None:
            raise SkipTest("systemctl is not installed")
        root = os.path.abspath(self.mktemp())
        os.makedirs(os.path.join(root, "etc/systemd/system"))
        for name in ("knocker.service", "knocker-firewall.service"):
            shutil.copy(os.path.join(ETC, name), os.path.join(root, "etc/systemd/system"))

        def enabled():
            return subprocess.run([systemctl, f"--root={root}", "is-enabled",
                                   "knocker-firewall.service"], capture_output=True, text=True,
                                  timeout=60).stdout.strip()

        self.assertEqual(enabled(), "disabled")
        done = subprocess.run([systemctl, f"--root={root}", "enable", "knocker.service"],
                              capture_output=True, text=True, timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(enabled(), "enabled")
        self.assertIn("knocker-firewall.service", self.daemon["Unit"]["Wants"])

    def test_systemd_accepts_it(self):
        service = self.firewall["Service"]
        output = systemd_verify(self, "knocker-firewall.service",
                                {"etc/systemd/system/knocker-firewall.service":
                                 "knocker-firewall.service"},
                                service["ExecStart"] + service["EnvironmentFile"])
        self.assertNotIn("knocker-firewall", output)

    def test_readme_installs_it(self):
        with open(os.path.join(os.path.dirname(ETC), "README.md")) as handle:
            section = handle.read().split("## Setting it up for real", 1)[1]
        block = section.split("```sh\n", 1)[1].split("```", 1)[0]
        copies = [line for line in block.splitlines()
                  if re.search(r"\bcp [^&]*etc/knocker-firewall\.service[^&]* /etc/systemd/system/",
                               line)]
        self.assertEqual(len(copies), 1, block)


class NftablesDropInTests(SynchronousTestCase):
    """
    etc/nftables-knocker.conf: after nftables.service loads its ruleset
    (whose flush removes knocker's table), nft-reloaded runs, with the
    daemon's settings (tests/test_nft_scripts.py runs the script itself).
    """

    def test_runs_after_every_load_with_the_daemons_settings(self):
        service = unit("nftables-knocker.conf")["Service"]
        # "-": a failure of knocker's neither stops nftables loading the
        # machine's ruleset nor marks it failed.
        self.assertEqual(service["ExecStartPost"], ["-/etc/knocker/scripts/nft-reloaded"])
        self.assertEqual(service["ExecReload"], ["-/etc/knocker/scripts/nft-reloaded"])
        self.assertEqual(service["EnvironmentFile"],
                         ["-" + path for path in
                          unit("knocker.service")["Service"]["EnvironmentFile"]])
        self.assertTrue(os.access(os.path.join(ETC, "scripts", "nft-reloaded"), os.X_OK))
        self.assertEqual(set(unit("nftables-knocker.conf")), {"", "Service"},
                         "a drop-in of the Service section only")

    def test_systemd_accepts_it(self):
        """systemd-analyze verify, on nftables.service with the drop-in in place."""
        output = systemd_verify(self, "nftables.service",
                                {"etc/systemd/system/nftables.service.d/knocker.conf":
                                 "nftables-knocker.conf"},
                                ["/etc/knocker/scripts/nft-reloaded", "/usr/sbin/nft"])
        self.assertNotIn("knocker", output)

    def test_readme_installs_it(self):
        with open(os.path.join(os.path.dirname(ETC), "README.md")) as handle:
            section = handle.read().split("## Setting it up for real", 1)[1]
        block = section.split("```sh\n", 1)[1].split("```", 1)[0]
        self.assertIn("install -D -m 0644 etc/nftables-knocker.conf "
                      "/etc/systemd/system/nftables.service.d/knocker.conf", block)
