#!/usr/bin/env python3
"""`ssh door true`, end to end, through a real nftables door.

door.py stops at the first TCP connection to the protected port; what users
feel is a whole ssh session.  This harness puts a real `sshd` (a throwaway
host key and authorized key) on the protected port behind the same door
(etc/scripts/nft-setup, over the veth pair of bench/netns.py) and times,
from just before the first spawn to `ssh`'s exit 0 in the client namespace:

  ssh-open           the door opened by the harness first (the client's
                     address put in the allowed set), then `ssh -F CONF door
                     true`: ssh and sshd alone, the floor for the others.
  knocker-connect    `ssh -F CONF door true` whose ProxyCommand is
                     `knocker connect --config FILE %h %p`, as README shows:
                     ssh knocks by itself (the daemon's on-success is
                     etc/scripts/nft-open).
  knocker-knock-ssh  `knocker knock --config FILE`, then at once `ssh` (what
                     `knocker knock --config FILE && ssh door true` does).
  knockd-ssh         knockd (start_command `nft add element`): `knock IP
                     p1..p6`, then at once `ssh`.  `knock` exits once its
                     SYNs are sent, before knockd has opened the door.

Every entry runs the same `ssh` binary with the same key and options
(BatchMode, no known_hosts, ConnectTimeout 10); the two without a
ProxyCommand connect straight to 10.77.0.1:2222.  Per run the allowed set is
checked empty and the drop rule's counter read before, and read again after:
a SYN of this run that the door dropped (ssh then waits for the kernel to
send it again, 1 s later) counts as a failed first connect.  The harness
removes the address afterwards, so every run starts closed.

Runs interleave the entries in a fresh random order every round, with a
random pause (0.05-0.35 s) between runs, one warm-up round discarded.
Everything (daemons, sshd, namespaces) is removed in a finally.

Usage: python3 bench/ssh_door.py [--runs 30] [--only ssh-open,knocker-connect]
           [--out FILE] [--keep]
"""

import os
import pwd
import shlex
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import door  # noqa: E402
import netns  # noqa: E402
import peers  # noqa: E402

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
SSH = shutil.which("ssh") or "/usr/bin/ssh"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
RUN_TIMEOUT = 60.0

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
"""

SSH_CONFIG = """\
Host door
    HostName {address}
    Port {port}
    User {user}
    IdentityFile {directory}/id_ed25519
    IdentitiesOnly yes
    StrictHostKeyChecking no
    UserKnownHostsFile /dev/null
    GlobalKnownHostsFile /dev/null
    BatchMode yes
    ConnectTimeout 10
    LogLevel ERROR
"""


class SshDoor(door.Door):
    """The door, with sshd as the protected service."""

    def service_argv(self):
        d = self.workdir
        for name in ("host_ed25519", "id_ed25519"):
            subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "knocker-bench",
                            "-f", os.path.join(d, name)], check=True, capture_output=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        shutil.copy(os.path.join(d, "id_ed25519.pub"), os.path.join(d, "authorized_keys"))
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # privilege separation dir
        config = os.path.join(d, "sshd_config")
        with open(config, "w") as f:
            f.write(SSHD_CONFIG.format(port=door.PORT, address=self.net.server_ip, directory=d))
        check = subprocess.run([SSHD, "-t", "-f", config], capture_output=True, text=True,
                               timeout=30, stdin=subprocess.DEVNULL)
        if check.returncode != 0:
            raise RuntimeError("sshd -t: " + check.stderr.strip())
        return [SSHD, "-D", "-e", "-f", config]

    def ssh_config(self, name, proxy=None):
        """An ssh_config for `ssh -F FILE door`, straight or through `proxy`."""
        text = SSH_CONFIG.format(address=self.net.server_ip, port=door.PORT,
                                 user=pwd.getpwuid(os.getuid()).pw_name, directory=self.workdir)
        if proxy:
            text += "    ProxyCommand %s\n" % proxy
        path = os.path.join(self.workdir, name)
        with open(path, "w") as f:
            f.write(text)
        return path

    def open_for(self, address):
        self.nft_run("add", "element", "inet", door.TABLE, door.SET, "{ %s }" % address)


class SshRun:
    """Time from the first command's spawn to ssh's exit 0; shared below."""

    ssh_door = None  # set by main()

    def commands(self):
        """[(argv, env)] run one after the other, each only if the one
        before exited 0 (as `a && b` does)."""
        raise NotImplementedError

    def before_run(self):
        pass

    def ssh_argv(self):
        return [SSH, "-F", self.ssh_door.ssh_config("ssh_config"), "door", "true"]

    def one_run(self):
        self.check_alive()
        gate, net = self.ssh_door, self.net
        if gate.allowed():  # a late action from a run before: never start open
            gate.flush()
            self.leftovers = getattr(self, "leftovers", 0) + 1
        drops0 = gate.drops()
        self.before_run()
        steps = []
        with net.inside("client"):
            t0 = common.now_ns()
            for argv, env in self.commands():
                p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
                try:
                    out, _ = p.communicate(timeout=RUN_TIMEOUT)
                except subprocess.TimeoutExpired:
                    p.kill()
                    out, _ = p.communicate()
                steps.append((common.now_ns() - t0) / 1e6)
                if p.returncode != 0:
                    self.last = {"dropped": gate.drops() - drops0}
                    raise peers.RunFailed("%s exit %s: %s" % (
                        os.path.basename(argv[0]), p.returncode,
                        out.decode(errors="replace").strip()[-300:]))
        dropped = gate.drops() - drops0
        self.last = {"total_ms": steps[-1], "first_exit_ms": steps[0], "dropped": dropped,
                     "first_failed": dropped > 0}
        gate.close(net.client_ip)
        return steps[-1] / 1e3


class SshOpen(SshRun, peers.Peer):
    name = "ssh-open"
    description = "`ssh door true`, the door opened beforehand by the harness (no knock)"

    def before_run(self):
        self.ssh_door.open_for(self.net.client_ip)

    def commands(self):
        return [(self.ssh_argv(), None)]


class SshKnockerConnect(SshRun, door.DoorKnocker):
    name = "knocker-connect"
    description = ("`ssh door true`, ProxyCommand `knocker connect --config FILE %h %p`; "
                   "on-success etc/scripts/nft-open")

    def setup(self, workdir, attempts=3):
        super().setup(workdir, attempts)
        proxy = " ".join(shlex.quote(word) for word in peers.knocker_cli() + [
            "connect", "--config", self.client_conf]) + " %h %p"
        self.proxy_config = self.ssh_door.ssh_config("ssh_config-%s" % self.name, proxy)

    def commands(self):
        return [([SSH, "-F", self.proxy_config, "door", "true"], self.env)]


class SshKnockerKnock(SshRun, door.DoorKnocker):
    name = "knocker-knock-ssh"
    description = "`knocker knock --config FILE && ssh door true`; on-success nft-open"

    def commands(self):
        return [(self.client_argv(), self.env), (self.ssh_argv(), None)]


class SshKnockd(SshRun, door.DoorKnockd):
    name = "knockd-ssh"
    description = "`knock IP p1..p6 && ssh door true`; knockd start_command nft add element"

    def commands(self):
        return [(self.client_argv(), None), (self.ssh_argv(), None)]


def make_entries(tools):
    return [SshOpen(tools), SshKnockerConnect(tools), SshKnockerKnock(tools), SshKnockd(tools)]


def summarize(name, runs, failures, description):
    ok = [r for r in runs if "total_ms" in r]
    s = common.summarize([r["total_ms"] / 1000 for r in ok], len(failures))
    first = [r["first_exit_ms"] for r in ok]
    s.update(name=name, description=description, attempts=len(runs),
             first_exit_p50_ms=round(common.percentile(first, 50), 3) if first else None,
             first_connect_failed=sum(1 for r in runs if r.get("first_failed")),
             syns_dropped=sum(r.get("dropped", 0) for r in runs),
             samples_ms=[round(r["total_ms"], 3) for r in ok],
             failure_reasons=sorted(set(failures)))
    s["first_failed"] = "%d/%d" % (s["first_connect_failed"], len(runs))
    return s


def main():
    args = door.options(__doc__, "ssh_door.json")
    why = door.why_not()
    missing = [p for p in (SSHD, SSH, SSH_KEYGEN) if not os.access(p, os.X_OK)]
    if why is None and missing:
        why = "%s not installed (bench/setup.sh installs openssh)" % ", ".join(missing)
    if why is not None:
        sys.exit("ssh_door.py: %s" % why)
    pause, seed, rng, deadline, entries = door.plan(args, make_entries)

    root = tempfile.mkdtemp(prefix="knocker-ssh-door-")
    net, gate, started, active, skipped = None, None, [], [], {}
    result = {"machine": common.machine_info(), "seed": seed, "runs": args.runs,
              "port": door.PORT, "pause_s": pause, "entries": {}, "skipped": skipped,
              "failed_first_connect": "a SYN of the run counted by the door's drop rule"}
    try:
        net = netns.make("veth")
        peers.Peer.net = net
        result["network"] = net.describe()
        gate = SshDoor(net, root)
        gate.setup()
        SshRun.ssh_door = gate
        print("door: sshd on %s:%d behind inet %s (drops new connections except from @%s)"
              % (net.server_ip, door.PORT, door.TABLE, door.SET))
        active = common.set_up(entries, root, started, skipped)
        print("entries: %s; %d runs each, interleaved, pause %.2f-%.2fs, seed %d"
              % (", ".join(e.name for e in active), args.runs, pause[0], pause[1], seed))
        data = door.interleave(active, args.runs, pause, rng, deadline, gate)
        rows = door.summaries(active, data, summarize, result)
        common.print_table(rows, [
            ("name", "entry"), ("n", "n"), ("failures", "fail"), ("p50_ms", "p50 ms"),
            ("p95_ms", "p95 ms"), ("min_ms", "min ms"), ("max_ms", "max ms"),
            ("first_exit_p50_ms", "1st exit p50"), ("first_failed", "1st connect failed"),
            ("syns_dropped", "SYNs dropped")],
            title="\nssh door true through the nftables door on %s:%d [veth], ms"
                  % (net.server_ip, door.PORT))
        base = result["entries"].get("ssh-open", {}).get("p50_ms")
        if base:
            added = {name: round(s["p50_ms"] - base, 3) for name, s in result["entries"].items()
                     if s.get("p50_ms") is not None and name != "ssh-open"}
            result["added_to_ssh_p50_ms"] = added
            print("\nadded to `ssh door true` with the door open (p50 %.1f ms): %s"
                  % (base, ", ".join("%s %+.1f ms" % item for item in added.items())))
    finally:
        common.clean_up([e.teardown for e in started]
                        + ([gate.teardown] if gate is not None else [])
                        + ([net.destroy] if net is not None else []), root, args.keep)
    result["machine"]["loadavg_end"] = common.machine_info().get("loadavg")
    common.write_result(args.out, result)


if __name__ == "__main__":
    main()
