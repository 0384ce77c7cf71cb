"""
Real ssh through C{knocker connect}, in namespaces: the server namespace
runs the knocker daemon with the shipped nftables scripts guarding port 22
(nft-setup, then nft-open / nft-close as on-success / on-close) and a real
C{sshd -D} on port 22 with a throwaway host key and authorized key; the
client namespace runs C{ssh -F CONFIG door true}, whose C{ProxyCommand} is
C{python -m knocker.main connect --config CLIENTCONF %h %p}.

Skipped, saying why, when sshd, ssh or ssh-keygen is missing
(C{apt-get install openssh-server openssh-client}; tests/run.sh installs
them as root) or the namespaces cannot be built.
"""

from __future__ import annotations

import base64
import os
import pwd
import shlex
import shutil
import subprocess
import sys

from twisted.trial.unittest import SkipTest

from knocker.core.knockfile import parse_knockfile
from knocker.core.knockgen import format_knockfile
from knocker.files import read_private, write_private

from .nsdaemon import CENTRAL, ROOT, DaemonInNamespace

SCRIPTS = os.path.join(ROOT, "etc", "scripts")
SSH_PORT = 22
CONNECT_TIMEOUT = 1.0

CLIENT_CONF = """\
[client]
server = tcp:host={server}:port={central}
knock-file = {knock_file}
log-file = {directory}/client.log
"""

SSHD_CONFIG = """\
Port {port}
ListenAddress {address}
HostKey {directory}/host_ed25519
AuthorizedKeysFile {directory}/authorized_keys
PidFile none
UsePAM no
StrictModes no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
PrintMotd no
PrintLastLog no
LogLevel VERBOSE
"""

SSH_CONFIG = """\
Host door
    HostName {address}
    Port {port}
    User {user}
    IdentityFile {directory}/id_ed25519
    IdentitiesOnly yes
    ProxyCommand {proxy}
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    BatchMode yes
    ConnectTimeout 30
    LogLevel ERROR
"""


def _program(name: str, *places: str) -> str | None:
    return shutil.which(name) or next((p for p in places if os.access(p, os.X_OK)), None)


SSHD = _program("sshd", "/usr/sbin/sshd", "/sbin/sshd")
SSH = _program("ssh", "/usr/bin/ssh")
SSH_KEYGEN = _program("ssh-keygen", "/usr/bin/ssh-keygen")


class SshThroughConnectTests(DaemonInNamespace):
    need_nft = True

    def setUp(self) -> None:
        missing = [name for name, path in
                   (("sshd", SSHD), ("ssh", SSH), ("ssh-keygen", SSH_KEYGEN)) if path is None]
        if missing:
            raise SkipTest(f"{', '.join(missing)} not found: apt-get install openssh-server "
                           "openssh-client (tests/run.sh does as root)")
        super().setUp()
        self.server4 = self.net.address4["server"]
        self.env["KNOCKER_PROTECTED_PORTS"] = str(SSH_PORT)
        self.net.run("server", [os.path.join(SCRIPTS, "nft-setup")], env=self.env)
        self.start_sshd()
        self.start_server(
            knocks=5, ports=4, pool_size=20, pool_range="20000-20999", knock_window=10,
            lockout=2, on_success=os.path.join(SCRIPTS, "nft-open"),
            on_close=os.path.join(SCRIPTS, "nft-close"), open_duration=60,
        )

    # -- helpers -------------------------------------------------------------

    def write(self, name: str, text: str, mode: int = 0o600) -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(path, mode)
        return path

    def keygen(self, name: str) -> None:
        subprocess.run(
            [SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"knocker-test-{name}",
             "-f", os.path.join(self.directory, name)],
            check=True, capture_output=True, timeout=30, stdin=subprocess.DEVNULL,
        )

    def start_sshd(self) -> None:
        """
        A real sshd on the server's address, port 22, with a throwaway host
        key and one authorized key; ready once it answers (from the server
        itself: loopback is not filtered).
        """
        self.keygen("host_ed25519")
        self.keygen("id_ed25519")
        shutil.copy(os.path.join(self.directory, "id_ed25519.pub"),
                    os.path.join(self.directory, "authorized_keys"))
        # sshd's privilege separation directory, made by its service otherwise
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        config = self.write("sshd_config", SSHD_CONFIG.format(
            port=SSH_PORT, address=self.server4, directory=self.directory))
        check = subprocess.run([SSHD, "-t", "-f", config], capture_output=True, text=True,
                               timeout=30, stdin=subprocess.DEVNULL)
        self.assertEqual(check.returncode, 0, f"sshd -t: {check.stderr}")
        self.sshd_log = os.path.join(self.directory, "sshd.log")
        with open(self.sshd_log, "wb") as log:
            self.sshd = self.net.spawn("server", [SSHD, "-D", "-e", "-f", config],
                                       stdout=log, stderr=subprocess.STDOUT)
        self.wait_until(lambda: self.connect("server", timeout=0.5) == "ok", 20,
                        f"sshd listening (log: {self.sshd_log})")

    def ssh_config(self, knock_file: str) -> str:
        client_conf = self.write("client.conf", CLIENT_CONF.format(
            server=self.server4, central=CENTRAL, knock_file=knock_file,
            directory=self.directory))
        proxy = " ".join(shlex.quote(word) for word in (
            sys.executable, "-m", "knocker.main", "connect", "--config", client_conf,
        )) + " %h %p"
        return self.write("ssh_config", SSH_CONFIG.format(
            address=self.server4, port=SSH_PORT, user=pwd.getpwuid(os.getuid()).pw_name,
            directory=self.directory, proxy=proxy))

    def ssh(self, config: str, *command: str, input: str | None = None):
        return self.net.run("client", [SSH, "-F", config, "door", *command], env=self.env,
                            timeout=90, check=False, input=input)

    def allowed(self) -> set[str]:
        import json

        result = self.net.run("server", [self.net.nft, "-j", "list", "set", "inet", "knocker",
                                         "allowed_v4"])
        found = set()
        for item in json.loads(result.stdout)["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                found.add(element["elem"]["val"] if isinstance(element, dict) else element)
        return found

    def connect(self, role: str, timeout: float = CONNECT_TIMEOUT) -> str:
        """
        A plain TCP connection from C{role} to port 22: C{"ok"} when sshd's
        banner came, C{"timeout"} when dropped (see L{netns.Topology.connect}).
        """
        outcome = self.net.connect(role, self.server4, SSH_PORT, timeout=timeout)
        return "ok" if outcome.startswith("error: connected, read b'SSH-2.0-") else outcome

    def diagnostics(self, result) -> str:
        with open(self.sshd_log, encoding="utf-8", errors="replace") as handle:
            sshd = "".join(handle.readlines()[-20:])
        return (f"ssh exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
                f"\nsshd:\n{sshd}\ndaemon:\n{self.daemon_tail()}")

    # -- tests ---------------------------------------------------------------

    def test_ssh_knocks_through_proxy_command(self) -> None:
        """
        Port 22 drops everyone at first; C{ssh door true} with knocker
        connect as ProxyCommand knocks, is let in and exits 0; only the
        client's address is let in.  A second session carries a megabyte
        each way through the relay unchanged, on the next one-time knock.
        """
        client4 = self.net.address4["client"]
        self.assertEqual(self.connect("attacker"), "timeout")
        self.assertEqual(self.connect("client"), "timeout")
        config = self.ssh_config(self.knock_file)
        result = self.ssh(config, "true")
        self.assertEqual(result.returncode, 0, self.diagnostics(result))
        self.assertEqual(result.stdout, "")
        self.assertNotIn("knocker", result.stderr)
        self.assertEqual(self.allowed(), {client4})
        self.assertEqual(self.connect("client"), "ok")
        self.assertEqual(self.connect("attacker"), "timeout")
        opens = self.audit("open")
        self.assertEqual([(e.get("ip"), e.get("index")) for e in opens], [(client4, 1)])

        data = base64.b64encode(os.urandom(768 * 1024)).decode() + "\n"
        result = self.ssh(config, "cat", input=data)
        self.assertEqual(result.returncode, 0, self.diagnostics(result))
        self.assertTrue(result.stdout == data, "the bytes came back changed")
        self.assertEqual([e.get("index") for e in self.audit("open")], [1, 2])

    def test_wrong_knock_file_fails_ssh(self) -> None:
        """
        A client whose knock file has the wrong secret: knocker's DENIED on
        ssh's standard error, ssh's own failure, status 255; the door stays
        shut.
        """
        forged = os.path.join(self.directory, "forged.knock")
        kf = parse_knockfile(read_private(self.knock_file), self.knock_file)
        write_private(forged, format_knockfile(kf.replace(secret=b"\x07" * 32)))
        result = self.ssh(self.ssh_config(forged), "true")
        self.assertEqual(result.returncode, 255, self.diagnostics(result))
        self.assertIn("knocker: DENIED", result.stderr)
        self.assertIn("Connection closed", result.stderr)  # ssh's own message
        self.assertEqual(result.stdout, "")
        self.assertEqual(self.allowed(), set())
        self.assertEqual(self.audit("open"), [])
        self.assertEqual([e.get("reason") for e in self.audit("denied")], ["bad-proof"])
        self.assertEqual(self.connect("client"), "timeout")
