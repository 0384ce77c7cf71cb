"""
README's "Setting it up for real", run as written, then put to the test on
namespaced hosts (docs/deploy.md).

The commands of README's block run as root, one by one, from a copy of this
source tree, inside a private mount namespace whose /etc, /opt, /var and
/usr/local are overlays on the host's: the venv, the user, /etc/knocker and
the state land in scratch folders and the host is never touched.  What a
test cannot run is stood in for: `apt-get install` (the packages must be
there already) and `systemctl ... enable --now knocker`, which becomes what
the installed unit says: ExecStartPre, then ExecStart, as its User= with its
ambient CAP_NET_ADMIN, UMask and EnvironmentFile, in the server namespace.
A real TCP listener on port 22 (KNOCKER_PROTECTED_PORTS in knocker.env)
stands behind the door.

Then: the client knocks (with the file `knocker generate` made as root while
the daemon, as user knocker, ran) and connects while the attacker cannot;
after `nft flush ruleset`, and after `nft -f` of Debian's nftables.conf, the
port is closed to the attacker again within 10 s and the client's door is
kept; stopping the daemon closes the door within 5 s; the daemon's log has
no warning (twistd's plugin cache among them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.trial.unittest import SkipTest, TestCase

from . import netns

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
OVERLAID = ("etc", "opt", "var", "usr/local")
#: What a root login shell on Debian has.
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: What `pip install .` and the README need of the tree.
SOURCE = ("README.md", "pyproject.toml", "setup.cfg", "setup.py", "bin", "knocker", "twisted",
          "etc")
PROTECTED = 22
CENTRAL = 7000

#: Debian 12's /etc/nftables.conf.
DEBIAN_NFTABLES = """#!/usr/sbin/nft -f

flush ruleset

table inet filter {
\tchain input {
\t\ttype filter hook input priority filter;
\t}
\tchain forward {
\t\ttype filter hook forward priority filter;
\t}
\tchain output {
\t\ttype filter hook output priority filter;
\t}
}
"""


def readme_commands() -> list[str]:
    """
    The command lines of the sh block in README's "Setting it up for real".
    """
    with open(os.path.join(ROOT, "README.md")) as handle:
        text = handle.read()
    section = text.split("## Setting it up for real", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    return [line for line in block.splitlines() if line.strip() and not line.startswith("#")]


def unit_settings(path: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line and line[0] not in "#;[":
                key, _, value = line.partition("=")
                found.setdefault(key.strip(), []).append(value.strip())
    return found


def environment_file(path: str) -> dict[str, str]:
    """
    NAME=VALUE lines, as systemd's EnvironmentFile= reads the simple ones.
    """
    values = {}
    with open(path) as handle:
        for line in handle:
            line = line.strip()
            if line and line[0] not in "#;":
                name, _, value = line.partition("=")
                values[name.strip()] = value.strip()
    return values


class DeployTests(TestCase):
    timeout = 600

    def setUp(self) -> None:
        ok, reason = netns.available(need_nft=True)
        if not ok:
            raise SkipTest(reason)
        for tool in ("unshare", "nsenter", "setpriv", "useradd", "mount"):
            if shutil.which(tool, path=ROOT_PATH) is None:
                raise SkipTest(f"{tool} is not installed")
        self.commands = readme_commands()
        for command in self.commands:
            if command.startswith("apt-get install "):
                missing = [package for package in command.split()[2:]
                           if subprocess.run(["dpkg", "-s", package], capture_output=True,
                                             stdin=subprocess.DEVNULL).returncode != 0]
                if missing:
                    raise SkipTest(f"README's packages are not installed: {missing}")
        self.tmp = tempfile.mkdtemp(prefix="knocker-deploy-")
        self.addCleanup(shutil.rmtree, self.tmp, ignore_errors=True)
        self.net = netns.Topology()
        self.addCleanup(self.net.destroy)
        self.net.create()
        self.holder = self.mount_namespace()
        self.src = os.path.join(self.tmp, "src")
        os.makedirs(self.src)
        for name in SOURCE:
            path = os.path.join(ROOT, name)
            if os.path.isdir(path):
                shutil.copytree(path, os.path.join(self.src, name),
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif os.path.exists(path):
                shutil.copy(path, self.src)
        self.daemon = None
        self.daemon_log = os.path.join(self.tmp, "journal.log")

    # -- the private mount namespace -----------------------------------------

    def mount_namespace(self) -> subprocess.Popen:
        script = ['set -e']
        for name in OVERLAID:
            upper, work = self.upper(name), os.path.join(self.tmp, name.replace("/", "-") + ".work")
            os.makedirs(upper)
            os.makedirs(work)
            script.append(f'mount -t overlay overlay -o "lowerdir=/{name},upperdir={upper},'
                          f'workdir={work}" "/{name}"')
        script.append("echo ready")
        script.append("exec sleep 100000")
        holder = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            start_new_session=True)
        self.addCleanup(self.end, holder)
        line = netns.read_line(holder, 10)
        if line.strip() != "ready":
            holder.kill()
            raise SkipTest(f"no private overlay mounts here: {holder.stderr.read().strip()}")
        return holder

    def upper(self, name: str) -> str:
        return os.path.join(self.tmp, name.replace("/", "-") + ".upper")

    def host_path(self, path: str) -> str:
        """
        Where a file the commands wrote under an overlaid folder is, seen
        from outside the mount namespace.
        """
        for name in OVERLAID:
            if path.startswith(f"/{name}/"):
                return os.path.join(self.upper(name), path[len(name) + 2:])
        return path

    def inside(self, argv, network: bool = False, cwd: str = "/") -> list[str]:
        prefix = ["nsenter", f"--mount=/proc/{self.holder.pid}/ns/mnt"]
        if network:
            prefix.append(f"--net=/run/netns/{self.net.names['server']}")
        # Entering a mount namespace moves to its root; cd inside it (nsenter's
        # --wd would keep a directory of the host's mounts).
        return [*prefix, "sh", "-c", 'cd "$0" && exec "$@"', cwd, *argv]

    @staticmethod
    def end(process: subprocess.Popen) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()

    # -- README's commands ---------------------------------------------------

    def run_readme(self) -> None:
        """
        Every command of the block, in order, as root, in the source tree.
        """
        env = {"PATH": ROOT_PATH, "HOME": "/root", "LANG": "C.UTF-8",
               **{k: v for k, v in os.environ.items() if k.startswith(("PIP_", "http", "HTTP"))}}
        for command in self.commands:
            if command.startswith("apt-get install "):
                continue  # checked in setUp
            if command.startswith("systemctl "):
                self.assertEqual(command, "systemctl daemon-reload && systemctl enable --now knocker")
                self.start_unit()
                continue
            done = subprocess.run(
                self.inside(["bash", "-e", "-o", "pipefail", "-c", command],
                            network="nft-setup" in command, cwd=self.src),
                env=env, capture_output=True, text=True, timeout=300,
                stdin=subprocess.DEVNULL)
            self.assertEqual(done.returncode, 0,
                             f"README: {command}\n{done.stdout[-3000:]}{done.stderr[-3000:]}")

    def start_unit(self) -> None:
        """
        What `systemctl enable --now knocker` does with the installed unit.
        """
        unit = unit_settings(self.host_path("/etc/systemd/system/knocker.service"))
        [user], [group] = unit["User"], unit["Group"]
        env = {"PATH": ROOT_PATH, "LANG": "C.UTF-8", "HOME": "/var/lib/knocker", "USER": user,
               "LOGNAME": user, "SHELL": "/usr/sbin/nologin"}
        for path in unit.get("EnvironmentFile", []):
            env.update(environment_file(self.host_path(path.lstrip("-"))))
        [caps] = unit["AmbientCapabilities"]
        caps = ",".join("+" + cap.lower().removeprefix("cap_") for cap in caps.split())
        [umask] = unit["UMask"]
        wrapper = ["setpriv", f"--reuid={user}", f"--regid={group}", "--init-groups",
                   f"--inh-caps=-all,{caps}", f"--ambient-caps=-all,{caps}",
                   f"--bounding-set=-all,{caps}", "--no-new-privs",
                   "sh", "-c", f'umask {umask} && exec "$0" "$@"']
        for command in unit.get("ExecStartPre", []):
            done = subprocess.run(self.inside([*wrapper, *command.split()], network=True),
                                  cwd="/", env=env, capture_output=True, text=True,
                                  timeout=60, stdin=subprocess.DEVNULL)
            self.assertEqual(done.returncode, 0, f"ExecStartPre={command}: {done.stderr}")
        [command] = unit["ExecStart"]
        with open(self.daemon_log, "wb") as log:
            self.daemon = subprocess.Popen(self.inside([*wrapper, *command.split()], network=True),
                                           cwd="/", env=env, stdout=log,
                                           stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.addCleanup(self.end, self.daemon)
        self.wait_until(lambda: any(e["event"] == "start" for e in self.audit()), 30,
                        "the daemon's start")

    # -- looking at it ---------------------------------------------------------

    def audit(self) -> list[dict]:
        path = self.host_path("/var/log/knocker/audit.log")
        events = []
        if os.path.exists(path):
            with open(path) as handle:
                for line in handle:
                    try:
                        events.append(json.loads(line))
                    except ValueError:
                        pass
        return events

    def log(self) -> str:
        with open(self.daemon_log, errors="replace") as handle:
            return handle.read()

    def wait_until(self, predicate, seconds: float, what: str) -> float:
        started = time.monotonic()
        while not predicate():
            if self.daemon is not None and self.daemon.poll() is not None and what != "exit":
                self.fail(f"the daemon exited while waiting for {what}:\n{self.log()[-3000:]}")
            if time.monotonic() - started > seconds:
                self.fail(f"{what}: not within {seconds}s\n{self.log()[-3000:]}")
            time.sleep(0.1)
        return time.monotonic() - started

    def allowed(self) -> list[str]:
        done = self.net.run("server", [self.net.nft, "-j", "list", "set", "inet", "knocker",
                                       "allowed_v4"], check=False)
        if done.returncode != 0:
            return []
        found = []
        for item in json.loads(done.stdout)["nftables"]:
            for element in item.get("set", {}).get("elem", []):
                found.append(element["elem"]["val"] if isinstance(element, dict) else element)
        return found

    def connect(self, role: str) -> str:
        return self.net.connect(role, self.net.address4["server"], PROTECTED, timeout=1.0)

    def guarded(self) -> bool:
        """
        The client gets through, the attacker does not.
        """
        return self.connect("attacker") == "timeout" and self.connect("client") == "ok"

    # -- the test --------------------------------------------------------------

    def test_readme_setup_then_flush_reload_and_stop(self) -> None:
        self.net.listen("server", PROTECTED)
        self.run_readme()
        client, attacker = self.net.address4["client"], self.net.address4["attacker"]

        # Set up as README says: the daemon as knocker, the state its own,
        # alice generated by root while it ran, and not a warning at start.
        status = subprocess.run(self.inside(["/opt/knocker/bin/python", "-c",
                                             "import os, sys; s = os.stat(sys.argv[1]); "
                                             "print(s.st_uid, s.st_gid)", "/var/lib/knocker"]),
                                capture_output=True, text=True, timeout=30)
        owner = status.stdout.split()
        for path in ("/var/lib/knocker/state.sqlite", "/var/lib/knocker/clients/alice.knock"):
            info = os.stat(self.host_path(path))
            self.assertEqual([str(info.st_uid), str(info.st_gid)], owner, path)
        self.assertNotEqual(owner, ["0", "0"])
        started = self.log()
        self.assertNotIn("Unable to write to plugin cache", started)
        self.assertEqual([line for line in started.splitlines()
                          if "#warn]" in line or "#error]" in line or "#critical]" in line
                          or "[stderr" in line], [])
        self.assertEqual(self.connect("attacker"), "timeout", "closed before any knock")
        self.assertEqual(self.connect("client"), "timeout")

        knock = self.net.run(
            "client",
            [sys.executable, "-m", "knocker.main", "knock", "--server",
             f"tcp:host={self.net.address4['server']}:port={CENTRAL}",
             "--knock-file", os.path.join(self.src, "alice.knock"),
             "--log-file", os.path.join(self.tmp, "client.log")],
            env={"PYTHONPATH": ROOT}, timeout=60, check=False)
        self.assertEqual(knock.returncode, 0, knock.stdout + knock.stderr + self.log()[-3000:])
        self.assertTrue(self.guarded())
        self.assertEqual(self.allowed(), [client])

        # A flush, then a reload of Debian's nftables.conf (flush ruleset
        # and a table of its own): back within 10 s, alice's door kept.
        debian = os.path.join(self.tmp, "nftables.conf")
        with open(debian, "w") as handle:
            handle.write(DEBIAN_NFTABLES)
        for change in (["flush", "ruleset"], ["-f", debian]):
            self.net.run("server", [self.net.nft, *change])
            self.assertEqual(self.allowed(), [])
            took = self.wait_until(lambda: self.allowed() == [client], 10,
                                   f"nft {' '.join(change)}: the door back")
            self.assertTrue(self.guarded(), f"after nft {' '.join(change)}")
            self.assertLess(took, 10)
        self.assertNotIn(attacker, self.allowed())
        restored = [e for e in self.audit() if e["event"] == "firewall"]
        self.assertEqual([(e["status"], e["doors"]) for e in restored],
                         [("restored", 1), ("restored", 1)])

        # systemctl stop: SIGTERM to the daemon alone (KillMode=mixed); the
        # door closes within 5 s, as the daemon exits.
        self.daemon.send_signal(signal.SIGTERM)
        took = self.wait_until(lambda: self.allowed() == [], 5, "the door closed at stop")
        self.assertLess(took, 5)
        self.daemon.wait(15)
        self.assertEqual(self.connect("client"), "timeout")
        self.assertEqual([e["event"] for e in self.audit()][-2:], ["close", "stop"])
        done = subprocess.run(self.inside(["knocker", "status", "--json"], cwd=self.src),
                              env={"PATH": ROOT_PATH}, capture_output=True, text=True,
                              timeout=60)
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout)
        self.assertEqual((report["state_dir"], report["pending_closes"]), ("/var/lib/knocker", 0))
        self.assertEqual([(c["client"], c["used"]) for c in report["clients"]], [("alice", 1)])
