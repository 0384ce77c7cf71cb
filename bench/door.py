#!/usr/bin/env python3
"""Knock, then connect: a real nftables door in front of a TCP service.

What users type is `knocker knock --config FILE && ssh door`: the figure
that matters is from the knock command's start to a working connection to
the protected port, first SYN included.  This harness builds that, over a
veth pair between two network namespaces (bench/netns.py):

  server namespace (10.77.0.1): the `inet knocker` table loaded by
      etc/scripts/nft-setup with KNOCKER_PROTECTED_PORTS=2222 (drop new
      connections to 2222 except from the allowed set), a tiny TCP service
      on 2222 that writes a banner and closes, and one daemon per entry,
      each adding the client's address to the allowed set when it opens:
        knocker-config  twistd knockserver, on-success = etc/scripts/nft-open
                        (on-close = etc/scripts/nft-close, 600 s later)
        knockd          start_command = nft add element inet knocker
                        allowed_v4 { %IP% }
        fwknop-udp,     fwknopd 2.6.10 has no nftables support (iptables,
        fwknop-pcap     firewalld, ipfw, pf): CMD_CYCLE_OPEN runs the same
                        nft add element command
  client namespace (10.77.0.2): the client command, then at once a TCP
      connect to 10.77.0.1:2222 and the banner read, as `knock && ssh` does.

Per run: the allowed set is checked empty, the drop rule's counter read;
t0 = CLOCK_MONOTONIC; the client is spawned (in the client namespace) and
waited for; if it exits 0 a blocking connect to 2222 starts at once; t1 =
connected.  Reported: t1 - t0 (p50, p95), the client's own exit, the
connect's own time, and how many first connects failed: the connect needed
a retransmitted SYN (took > 0.9 s; Linux resends after 1 s) or failed, or
the drop rule counted a SYN to 2222 from this run.  Then the harness removes
the address (`nft delete element`), so every run starts closed.  The connect
is made by this harness, with no connecting program spawned: ssh's own
start-up would add the same to every entry.

knockd's and fwknop's clients exit as soon as their packets are sent, before
the daemon has acted, so a client that connects at once races the door;
knocker knock exits on OPEN, which the daemon sends after nft-open has
exited 0.

Runs interleave the entries in a fresh random order every round, with a
random pause (0.05-0.35 s) between runs, one warm-up round discarded.
Everything (daemons, service, namespaces) is removed in a finally.

Usage: python3 bench/door.py [--runs 30] [--only knocker-config,knockd] [--out FILE]
"""

import argparse
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import netns  # noqa: E402
import peers  # noqa: E402
from common import Daemon  # noqa: E402

PORT = 2222
TABLE, SET = "knocker", "allowed_v4"
SCRIPTS = os.path.join(common.REPO, "etc", "scripts")
RETRANSMITTED = 0.9  # s: a connect this slow waited for a resent SYN
CONNECT_TIMEOUT = 8.0  # s: covers the SYN resent after 1 s and after 3 s
TARGET_P95_MS = 50.0

SERVICE = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(128)
print("listening", flush=True)
while True:
    c, _ = s.accept()
    try:
        c.sendall(b"SSH-2.0-knocker-door-bench\r\n")
    except OSError:
        pass
    c.close()
"""


class Door:
    """The nftables table and the service in the server namespace."""

    def __init__(self, net, workdir):
        self.net, self.workdir = net, workdir
        self.nft = netns.nft_cmd()
        self.service = None

    def nft_run(self, *args, stdin=None):
        r = self.net.run("server", [self.nft, *args], input=stdin)
        if r.returncode != 0:
            raise RuntimeError("nft %s: %s" % (" ".join(args), r.stderr.strip()))
        return r.stdout

    def setup(self):
        env = dict(os.environ, KNOCKER_PROTECTED_PORTS=str(PORT))
        r = self.net.run("server", [os.path.join(SCRIPTS, "nft-setup")], env=env)
        if r.returncode != 0:
            raise RuntimeError("nft-setup: exit %s: %s%s" % (r.returncode, r.stdout, r.stderr))
        with self.net.inside("server"):
            self.service = Daemon(self.service_argv(), os.path.join(self.workdir, "service.out"))

        def up():
            with self.net.inside("server"):
                return common.tcp_listening(PORT)
        if not common.wait_for(lambda: up() or not self.service.alive(), 10, interval=0.02) \
                or not self.service.alive():
            raise RuntimeError("the service did not listen:\n" + self.service.log_text())

    def service_argv(self):
        """The protected service: a banner and a close (ssh_door.py runs sshd)."""
        return [sys.executable, "-c", SERVICE, self.net.server_ip, str(PORT)]

    def drops(self):
        """Packets the drop rule (tcp dport @protected_ports drop) counted."""
        text = self.nft_run("list", "chain", "inet", TABLE, "input")
        m = re.search(r"counter packets (\d+) bytes \d+ drop", text)
        return int(m.group(1)) if m else 0

    def allowed(self):
        text = self.nft_run("list", "set", "inet", TABLE, SET)
        m = re.search(r"elements = \{([^}]*)\}", text)
        return [e.split()[0].strip(",") for e in m.group(1).split(",") if e.strip()] if m else []

    def close(self, address):
        # adding first makes deleting an absent element succeed; atomic
        self.nft_run("-f", "-", stdin="add element inet %s %s { %s }\n"
                     "delete element inet %s %s { %s }\n"
                     % (TABLE, SET, address, TABLE, SET, address))

    def flush(self):
        self.nft_run("flush", "set", "inet", TABLE, SET)

    def teardown(self):
        if self.service is not None:
            self.service.stop()


NFT_OPEN = "%s add element inet %s %s { %%s }" % (netns.nft_cmd() or "nft", TABLE, SET)


class DoorRun:
    """knock, then connect; shared by the entries below."""

    door = None  # set by main()

    def one_run(self):
        self.check_alive()
        door, net = self.door, self.net
        left = door.allowed()
        if left:  # a late action from a run before: never start open
            door.flush()
            self.leftovers = getattr(self, "leftovers", 0) + 1
        drops0 = door.drops()
        argv, env = self.client_argv(), self.client_env()
        with net.inside("client"):
            sock = socket.socket()  # made here: it lives in the client namespace
            try:
                t0 = common.now_ns()
                p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=env)
                try:
                    out, _ = p.communicate(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    out, _ = p.communicate()
                t_exit = common.now_ns()
                self.last = {"exit_ms": (t_exit - t0) / 1e6}
                if p.returncode != 0:
                    raise peers.RunFailed("client exit %s: %s"
                                          % (p.returncode, out.decode(errors="replace")[-200:]))
                sock.settimeout(CONNECT_TIMEOUT)
                try:
                    sock.connect((net.server_ip, PORT))
                    t_conn = common.now_ns()
                    sock.settimeout(2.0)
                    banner = sock.recv(64)
                except OSError as e:
                    self.last.update(connect_ms=(common.now_ns() - t_exit) / 1e6,
                                     first_failed=True, dropped=door.drops() - drops0)
                    raise peers.RunFailed("connect to %s:%d failed after the client's exit "
                                          "0: %s" % (net.server_ip, PORT, e)) from None
            finally:
                sock.close()
        dropped = door.drops() - drops0
        connect_s = (t_conn - t_exit) / 1e9
        self.last.update(total_ms=(t_conn - t0) / 1e6, connect_ms=connect_s * 1e3,
                         dropped=dropped, banner=banner.startswith(b"SSH-2.0-"),
                         first_failed=connect_s > RETRANSMITTED or dropped > 0)
        door.close(net.client_ip)
        return (t_conn - t0) / 1e9

    def client_env(self):
        return None


class DoorKnocker(DoorRun, peers.KnockerConfig):
    description = ("knocker knock --config (etc/knockclient.conf), on-success "
                   "etc/scripts/nft-open; exits on OPEN")

    def action_conf(self):
        return ("on-success = %s\non-close = %s\nopen-duration = 600\n"
                % (os.path.join(SCRIPTS, "nft-open"), os.path.join(SCRIPTS, "nft-close")))

    def client_env(self):
        return self.env


class DoorKnockerNft(DoorKnocker):
    """A contrast, not what users run: knocker with on-success a two-line sh
    script running knockd's very `nft add element` command, to show what
    etc/scripts/nft-open itself costs (bash, a `nft list set` check, and an
    add-delete-add transaction)."""
    name = "knocker-config-nft"
    description = ("knocker knock --config, on-success `sh: exec nft add element` "
                   "(contrast for etc/scripts/nft-open)")

    def action_conf(self):
        paths = {}
        for verb in ("add", "delete"):
            path = paths[verb] = os.path.join(self.workdir, "nft-%s" % verb)
            with open(path, "w") as f:
                f.write('#!/bin/sh\nexec %s %s element inet %s %s "{ $1 }"\n'
                        % (netns.nft_cmd() or "nft", verb, TABLE, SET))
            os.chmod(path, 0o755)
        return ("on-success = %s\non-close = %s\nopen-duration = 600\n"
                % (paths["add"], paths["delete"]))


class DoorKnockd(DoorRun, peers.Knockd):
    description = "knockd, start_command nft add element; `knock` exits once its SYNs are sent"

    def action(self):
        return NFT_OPEN % "%IP%"


class DoorFwknop(DoorRun, peers.Fwknop):
    access_port = "tcp/%d" % PORT

    def __init__(self, tools, mode):
        super().__init__(tools, mode)
        self.description = self.description_by_mode[mode].replace(
            "fwknop SPA", "CMD_CYCLE_OPEN nft add element (no nftables support in fwknopd)")

    def action(self):
        return NFT_OPEN % "$IP"

    def client_env(self):
        return dict(os.environ, HOME=self.workdir)


def make_entries(tools):
    return [DoorKnocker(tools), DoorKnockerNft(tools), DoorKnockd(tools),
            DoorFwknop(tools, "udp"), DoorFwknop(tools, "pcap")]


def interleave(entries, runs, pause, rng, deadline, door):
    """
    Round 0 a discarded warm-up, then C{runs} rounds, each visiting every
    entry once in a fresh random order with a random pause between runs,
    until C{deadline} (monotonic).  Returns each entry's C{last} records
    and failure reasons; after a failure the door is flushed, so the next
    run starts closed; an entry whose daemon died is run no more.
    """
    data = {e.name: {"runs": [], "failures": []} for e in entries}
    dead = set()
    for rnd in range(1 + runs):
        if time.monotonic() > deadline:
            print("time bound reached after %d rounds" % rnd)
            break
        order = [e for e in entries if e.name not in dead]
        rng.shuffle(order)
        for e in order:
            e.last = {}
            try:
                e.one_run()
            except peers.RunFailed as exc:
                print("  %s: run %d failed: %s" % (e.name, rnd, exc))
                if rnd:
                    data[e.name]["failures"].append(str(exc))
                if isinstance(exc, peers.DaemonDied):
                    dead.add(e.name)
                try:
                    door.flush()
                except RuntimeError:
                    pass
                time.sleep(e.recover_after)
            if rnd and e.last:
                data[e.name]["runs"].append(dict(e.last))
            common.random_pause(pause[0], pause[1], rng)
    return data


def summaries(entries, data, summarize, result):
    """Each entry's C{summarize}d figures, also put in C{result["entries"]}."""
    rows = []
    for e in entries:
        s = summarize(e.name, data[e.name]["runs"], data[e.name]["failures"], e.description)
        s["leftover_opens"] = getattr(e, "leftovers", 0)
        result["entries"][e.name] = s
        rows.append(s)
    return rows


def summarize(name, runs, failures, description):
    ok = [r for r in runs if "total_ms" in r]
    s = common.summarize([r["total_ms"] / 1000 for r in ok], len(failures))
    ex = [r["exit_ms"] for r in runs if "exit_ms" in r]
    conn = [r["connect_ms"] for r in ok]
    s.update(
        name=name, description=description,
        client_exit_p50_ms=round(common.percentile(ex, 50), 3) if ex else None,
        connect_p50_ms=round(common.percentile(conn, 50), 3) if conn else None,
        connect_max_ms=round(max(conn), 3) if conn else None,
        first_connect_failed=sum(1 for r in runs if r.get("first_failed")),
        attempts=len(runs),
        syns_dropped=sum(r.get("dropped", 0) for r in runs),
        no_banner=sum(1 for r in ok if not r.get("banner")),
        samples_ms=[round(r["total_ms"], 3) for r in ok],
        connect_samples_ms=[round(r["connect_ms"], 3) for r in ok],
        failure_reasons=sorted(set(failures)))
    s["first_failed"] = "%d/%d" % (s["first_connect_failed"], len(runs))
    return s


def options(doc: str, result: str):
    """The command line door.py and ssh_door.py share; SIGTERM ends the run."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per entry (default 30)")
    ap.add_argument("--pause", default="0.05,0.35", help="random pause LO,HI s between runs")
    ap.add_argument("--only", help="comma list of entries")
    ap.add_argument("--max-seconds", type=float, default=900, help="overall time bound")
    ap.add_argument("--seed", type=int)
    ap.add_argument("--out", default=os.path.join(common.RESULTS, result))
    ap.add_argument("--keep", action="store_true", help="keep the temp dir and logs")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return args


def why_not() -> str | None:
    """Why the door cannot be built here (namespaces, nft), or None."""
    ok, why = netns.available()
    if ok and netns.nft_cmd() is None:
        ok, why = False, "nft (nftables) is not installed"
    return None if ok else why


def plan(args, make_entries):
    """C{(pause, seed, rng, deadline, entries)} of a run as C{args} ask."""
    pause = tuple(float(x) for x in args.pause.split(","))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    entries = make_entries(common.ensure_built())
    if args.only:
        entries = [e for e in entries if e.name in args.only.split(",")]
    return pause, seed, random.Random(seed), time.monotonic() + args.max_seconds, entries


def main():
    args = options(__doc__, "door.json")
    why = why_not()
    if why is not None:
        sys.exit("door.py: %s" % why)
    pause, seed, rng, deadline, entries = plan(args, make_entries)

    root = tempfile.mkdtemp(prefix="knocker-door-")
    net, door, started, active, skipped = None, None, [], [], {}
    result = {"machine": common.machine_info(), "seed": seed, "runs": args.runs, "port": PORT,
              "pause_s": pause, "entries": {}, "skipped": skipped,
              "failed_first_connect": "connect > %.1f s (a resent SYN), a failed connect, or "
                                      "a SYN to the port counted by the drop rule" % RETRANSMITTED}
    try:
        net = netns.make("veth")
        peers.Peer.net = net
        result["network"] = net.describe()
        door = Door(net, root)
        door.setup()
        DoorRun.door = door
        print("door: inet %s in %s drops new connections to %s:%d except from @%s"
              % (TABLE, net.names["server"], net.server_ip, PORT, SET))
        active = common.set_up(entries, root, started, skipped)
        print("entries: %s; %d runs each, interleaved, pause %.2f-%.2fs, seed %d"
              % (", ".join(e.name for e in active), args.runs, pause[0], pause[1], seed))
        data = interleave(active, args.runs, pause, rng, deadline, door)
        rows = summaries(active, data, summarize, result)
        common.print_table(rows, [
            ("name", "entry"), ("n", "n"), ("failures", "fail"), ("p50_ms", "p50 ms"),
            ("p95_ms", "p95 ms"), ("min_ms", "min ms"), ("max_ms", "max ms"),
            ("client_exit_p50_ms", "exit p50"), ("connect_p50_ms", "connect p50"),
            ("first_failed", "1st connect failed"), ("syns_dropped", "SYNs dropped")],
            title="\nknock, then connect to %s:%d through the nftables door [veth], ms"
                  % (net.server_ip, PORT))
        k = result["entries"].get("knocker-config")
        if k and "p95_ms" in k:
            met = k["p95_ms"] < TARGET_P95_MS and k["first_connect_failed"] == 0 \
                and not k["failures"]
            result["target"] = {"p95_ms_max": TARGET_P95_MS, "met": met}
            print("\nknocker-config: p95 %.1f ms (target < %.0f ms), %s first connects failed "
                  "(target 0): %s" % (k["p95_ms"], TARGET_P95_MS, k["first_failed"],
                                      "met" if met else "NOT MET"))
    finally:
        common.clean_up([e.teardown for e in started]
                        + ([door.teardown] if door is not None else [])
                        + ([net.destroy] if net is not None else []), root, args.keep)
    result["machine"]["loadavg_end"] = common.machine_info().get("loadavg")
    common.write_result(args.out, result)


if __name__ == "__main__":
    main()
