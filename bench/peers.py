#!/usr/bin/env python3
"""Time to open: knocker against its peers, knockd and fwknop.

"Time to open" runs from just before the client process is spawned to the
moment the server's success action starts. The action is bench/build/marker,
which stamps CLOCK_MONOTONIC into a file; this harness reads the spawn instant
from the same clock (time.clock_gettime_ns(CLOCK_MONOTONIC)), so the two
subtract with no clock conversion. The figure therefore includes client
start-up, the knock itself, the daemon noticing it and forking the action.

Entries run interleaved: every round visits each entry once, in a freshly
shuffled order, with a random pause between runs. Interleaving spreads the
machine's noise evenly over the entries; the random pause keeps a run from
phase-locking with a daemon's polling timer.

Each entry is a Peer: setup(workdir), one_run() -> seconds, teardown(). A new
contender is one more subclass in make_peers().

Also measured here: knockd (and, if present, knocker) while a separate
process floods loopback ports at --flood-rate connections/s, interleaving
quiet and flooded knocks.

Beside time to open, each entry's client spawn-to-exit is reported (what
`time knocker knock` shows), and for `knocker-config` (`knocker knock
--config FILE`, what users type) the issue's targets: time to open at most
0.6x knockd's, spawn to exit at most 5 ms over `python -c pass`.

--netns runs the daemons in one network namespace and the clients in
another, joined by a veth pair (bench/netns.py), instead of loopback.

Usage: python3 bench/peers.py [--runs 30] [--only knockd,fwknop-udp] [--netns] ...
"""

import argparse
import base64
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import netns  # noqa: E402
from common import Daemon, StampFile  # noqa: E402


class RunFailed(Exception):
    """One run did not open; the reason goes into the results."""


class DaemonDied(RunFailed):
    """The peer's daemon is gone: stop running that peer."""


class Peer:
    name = "?"
    description = ""
    is_baseline = False
    same_src_flood = False
    # seconds a failed knock needs before the daemon forgets it
    recover_after = 0.0
    # where daemons and clients run: netns.Loopback() (default) or a
    # netns.Veth() (--netns), set once by main() for every peer
    net = netns.Loopback()

    def __init__(self, tools):
        self.tools = tools
        self.skip_reason = None
        self.daemon = None
        self.last_exit_s = None  # client spawn -> client exit, last run

    def setup(self, workdir):
        self.workdir = workdir

    def one_run(self):
        raise NotImplementedError

    def teardown(self):
        if self.daemon is not None:
            self.daemon.stop()

    def flood_ports(self):
        """Ports (list of numbers or LO-HI strings) the flood scenario aims
        at, or None if it does not apply."""
        return None

    def check_alive(self):
        """A daemon that died makes every later run fail; say so plainly."""
        if self.daemon is not None and not self.daemon.alive():
            tail = self.daemon.log_text().strip().splitlines()[-3:]
            raise DaemonDied("%s daemon exited (status %s): %s"
                             % (self.name, self.daemon.proc.returncode, " | ".join(tail)))

    def daemon_cpu(self):
        return self.daemon.cpu_seconds() if self.daemon else None

    # shared by the daemon peers ------------------------------------------
    def _install_marker(self, name="marker"):
        path = os.path.join(self.workdir, name)
        shutil.copy(self.tools["marker"], path)
        os.chmod(path, 0o755)
        self.stamps = StampFile(path + ".stamp")
        return path

    def _timed_client(self, argv, env=None, expect_rc=0, stamp_timeout=5.0):
        """Spawn the client, wait for the action's stamp and the client's
        exit; returns spawn->action seconds."""
        self.check_alive()
        with self.net.inside("client"):
            t0, t_exit, rc, out = common.run_timed(argv, timeout=20.0, env=env)
        self.last_exit_s = (t_exit - t0) / 1e9
        if rc is None:
            self.stamps.settle()
            raise RunFailed("client timed out")
        if expect_rc is not None and rc != expect_rc:
            self.stamps.settle()
            raise RunFailed("client exit %s: %s" % (rc, out.strip()[-200:]))
        # the client may exit before the daemon acts (knockd, fwknop) or
        # after (knocker waits for OPEN); either way wait for the stamp
        stamp = self.stamps.next_stamp(stamp_timeout)
        if stamp is None:
            raise RunFailed("no action within %.0fs" % stamp_timeout)
        return (stamp[0] - t0) / 1e9


# --------------------------------------------------------------------------
# baselines: client process start-up alone

class Baseline(Peer):
    is_baseline = True

    def __init__(self, tools, name, argv, description, env=None):
        super().__init__(tools)
        self.name = name
        self.argv = argv
        self.description = description
        self.env = env
        if not os.path.exists(argv[0]):
            self.skip_reason = "%s not found" % argv[0]

    def one_run(self):
        with self.net.inside("client"):  # a floor measured where the clients run
            t0, t1, rc, out = common.run_timed(self.argv, env=self.env)
        if rc != 0:
            raise RunFailed("exit %s: %s" % (rc, out.strip()[-200:]))
        self.last_exit_s = (t1 - t0) / 1e9
        return self.last_exit_s


# --------------------------------------------------------------------------
# knockd: static 6-port TCP sequence, watched with pcap on lo

class Knockd(Peer):
    name = "knockd"
    description = "knockd 0.8, pcap on lo, `knock` client, 6 TCP ports"
    recover_after = 2.5  # > seq_timeout, so a broken attempt has expired
    # a flood from the knocker's own address is worth measuring only here:
    # knocker locks such a source out by design
    same_src_flood = True

    def __init__(self, tools):
        super().__init__(tools)
        for prog in ("knockd", "knock"):
            if shutil.which(prog) is None:
                self.skip_reason = "%s not installed (run bench/setup.sh)" % prog

    def action(self):
        """knockd's `command` line: the marker, given the knocker's address."""
        return "%s %%IP%%" % self._install_marker()

    def setup(self, workdir):
        super().setup(workdir)
        action = self.action()
        rng = random.Random()
        # the sequence lives inside a free block, which the flood then hits
        self.block = common.free_port_block(1000, contiguous=True, rng=rng)
        self.sequence = rng.sample(self.block, 6)
        conf = os.path.join(workdir, "knockd.conf")
        with open(conf, "w") as f:
            f.write("[options]\n"
                    "  LogFile = %s/knockd.log\n"
                    "  PidFile = %s/knockd.pid\n"
                    "  Interface = %s\n"
                    "[bench]\n"
                    "  sequence = %s\n"
                    "  seq_timeout = 2\n"
                    "  tcpflags = syn\n"
                    "  command = %s\n"
                    % (workdir, workdir, self.net.server_if, ",".join(map(str, self.sequence)),
                       action))
        with self.net.inside("server"):
            self.daemon = Daemon(["knockd", "-i", self.net.server_if, "-c", conf],
                                 os.path.join(workdir, "knockd.out"))
        # knockd announces itself in its LogFile, not on stdout
        log = os.path.join(workdir, "knockd.log")
        started = common.wait_for(
            lambda: not self.daemon.alive() or (
                os.path.exists(log) and "listening on" in open(log).read()), 10, interval=0.02)
        if not started or not self.daemon.alive():
            raise RuntimeError("knockd did not start:\n" + self.daemon.log_text())

    def one_run(self):
        return self._timed_client(self.client_argv())

    def client_argv(self):
        return ["knock", self.net.server_ip] + [str(p) for p in self.sequence]

    def flood_ports(self):
        # a 1000-port block holding the sequence; all closed, so each flood
        # connection is a SYN knockd must inspect and a RST back
        return ["%d-%d" % (self.block[0], self.block[-1])]


# --------------------------------------------------------------------------
# fwknop: one encrypted, HMAC'd UDP packet (SPA)

class Fwknop(Peer):
    description_by_mode = {
        "pcap": "fwknopd 2.6.10 stock: pcap on lo (PCAP_LOOP_SLEEP default 100ms), fwknop SPA",
        "udp": "fwknopd 2.6.10 ENABLE_UDP_SERVER (no pcap), fwknop SPA",
    }

    def __init__(self, tools, mode):
        super().__init__(tools)
        self.mode = mode
        self.name = "fwknop-" + mode
        self.description = self.description_by_mode[mode]
        for prog in ("fwknopd", "fwknop"):
            if shutil.which(prog) is None:
                self.skip_reason = "%s not installed (run bench/setup.sh)" % prog

    def action(self):
        """CMD_CYCLE_OPEN: the marker.  It runs instead of an iptables rule,
        so the benchmark never touches the host firewall."""
        return "%s $IP $PORT" % self._install_marker()

    access_port = "tcp/22"

    def setup(self, workdir):
        super().setup(workdir)
        action = self.action()
        self.port = common.free_port_block(1)[0]
        key = base64.b64encode(os.urandom(32)).decode()
        hmac_key = base64.b64encode(os.urandom(64)).decode()

        def secret_file(name, text):
            path = os.path.join(workdir, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
            return path

        lines = ["PCAP_INTF %s" % self.net.server_if, "FWKNOP_RUN_DIR %s" % workdir]
        if self.mode == "udp":
            lines += ["ENABLE_UDP_SERVER Y", "UDPSERV_PORT %d" % self.port]
        else:
            lines += ["PCAP_FILTER udp port %d" % self.port]
        conf = secret_file("fwknopd.conf", "\n".join(lines) + "\n")
        access = secret_file("access.conf", (
            "SOURCE ANY\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\n"
            "CMD_CYCLE_OPEN %s\nCMD_CYCLE_CLOSE NONE\n") % (key, hmac_key, action))
        # the client reads its keys from its own rc file, not from argv
        self.rc = secret_file("fwknoprc", (
            "[bench]\nSPA_SERVER %s\nSPA_SERVER_PORT %d\nACCESS %s\n"
            "ALLOW_IP %s\nKEY_BASE64 %s\nHMAC_KEY_BASE64 %s\nUSE_HMAC Y\n")
            % (self.net.server_ip, self.port, self.access_port, self.net.client_ip, key,
               hmac_key))
        with self.net.inside("server"):
            self.daemon = Daemon(
                ["fwknopd", "-f", "-c", conf, "-a", access,
                 "-d", os.path.join(workdir, "digest.cache"),
                 "-p", os.path.join(workdir, "fwknopd.pid"), "-r", workdir],
                os.path.join(workdir, "fwknopd.out"))

        def udp_bound():
            with self.net.inside("server"):
                return common.udp_bound(self.port)
        if self.mode == "udp":
            ok = common.wait_for(lambda: udp_bound() or not self.daemon.alive(),
                                 10) and self.daemon.alive()
        else:
            ok = self.daemon.wait_log("main event loop", 10)
            time.sleep(0.2)  # the pcap handle opens around that message
        if not ok:
            raise RuntimeError("fwknopd did not start:\n" + self.daemon.log_text())

    def client_env(self):
        # HOME points at the workdir so the client never writes ~/.fwknoprc
        return dict(os.environ, HOME=self.workdir)

    def client_argv(self):
        return ["fwknop", "--rc-file", self.rc, "-n", "bench"]

    def one_run(self):
        return self._timed_client(self.client_argv(), env=self.client_env())


# --------------------------------------------------------------------------
# knocker: the contender, driven only through its documented interface

def knocker_env():
    """The environment for knocker's processes: the package installed in the
    venv from this tree (bench/run installs it), as a user would run it,
    with its compiled bytecode; not the source tree on PYTHONPATH, which
    under PYTHONDONTWRITEBYTECODE is compiled again on every run."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    return env


def knocker_cli():
    """argv prefix that runs the `knocker` command (console script if the
    package is installed in the venv, else the same entry point by hand)."""
    script = os.path.join(common.VENV_BIN, "knocker")
    if os.path.exists(script):
        return [script]
    return [common.VENV_PY, "-c", "import sys; from knocker.admin.cli import main; sys.exit(main())"]


def knocker_missing():
    """None if the knocker package can be used, else why not."""
    if not os.path.exists(common.VENV_PY):
        return "no venv at %s" % common.VENV_PY
    r = subprocess.run([common.VENV_PY, "-c", "import knocker.admin.cli, twisted.plugins.knocker_plugins"],
                       env=knocker_env(), cwd=common.REPO, capture_output=True, text=True)
    if r.returncode != 0:
        return "knocker is not importable yet: " + (r.stderr.strip().splitlines() or ["?"])[-1]
    return None


class Knocker(Peer):
    name = "knocker"
    description = "knocker (twistd knockserver), `knocker knock`: handshake + 6 TCP ports + OPEN"
    recover_after = 0.0

    def __init__(self, tools, pool_size=100, lockout=3, name=None, unchecked=False):
        super().__init__(tools)
        if name is not None:
            self.name = name
            self.description = (f"{self.description}, a pool of {pool_size} ports"
                                + (", the whole-file check every time" if unchecked else ""))
        self.pool_size = pool_size
        self.unchecked = unchecked
        self.lockout = lockout
        self.skip_reason = knocker_missing()

    def action_conf(self):
        """The [server] lines naming the actions: the marker on success."""
        return "on-success = %s\n" % self._install_marker("on-success")

    def setup(self, workdir, attempts=3):
        """Draw ports and start the daemon; with fresh ports and state again
        if it did not listen (a port taken between the draw and the bind:
        other programs on a shared machine pick ports too)."""
        super().setup(workdir)
        self.env = knocker_env()
        action = self.action_conf()
        for attempt in range(attempts):
            try:
                return self._start(workdir, action, attempt)
            except RuntimeError as e:
                if self.daemon is not None:
                    self.daemon.stop()
                    self.daemon = None
                if attempt == attempts - 1:
                    raise
                print("  %s: start attempt %d failed, again with other ports: %s"
                      % (self.name, attempt + 1, str(e).strip().splitlines()[-1][-200:]))

    def _start(self, workdir, action, attempt):
        shutil.rmtree(os.path.join(workdir, "state"), ignore_errors=True)
        for leftover in ("bench.knock", "bench.knock.checked"):
            try:
                os.unlink(os.path.join(workdir, leftover))
            except FileNotFoundError:
                pass
        # Below the ephemeral range (32768+ here), which outgoing connections
        # (and the floods of other benchmarks) take ports from; a big pool
        # lower still, where connections in TIME_WAIT leave no long free run.
        self.central = common.free_port_block(1, hi=32768)[0]
        span = min(self.pool_size * 2, self.pool_size + 2000)  # room to draw from
        where = {"hi": 32768} if self.pool_size <= 1000 else {"lo": 1024, "hi": 32768}
        block = common.free_port_block(span, contiguous=True, avoid=[self.central], **where)
        self.pool_lo, self.pool_hi = block[0], block[-1]
        self.conf = os.path.join(workdir, "knockserver.conf")
        with open(self.conf, "w") as f:
            f.write("[server]\n"
                    "central = tcp:%d:interface=%s\n"
                    "interface = %s\n"
                    "state-dir = %s/state\n"
                    "pool-size = %d\n"
                    "pool-range = %d-%d\n"
                    "%s"
                    "lockout-scope = source\n"
                    "admin =\n"
                    "lockout = %s\n"
                    "knock-window = 10\n"
                    "audit-log = %s/audit.log\n"
                    % (self.central, self.net.server_ip, self.net.server_ip, workdir,
                       self.pool_size, self.pool_lo, self.pool_hi, action, self.lockout,
                       workdir))
        self.knock_file = os.path.join(workdir, "bench.knock")
        r = subprocess.run(knocker_cli() + ["generate", "bench", "--config", self.conf,
                                            "-o", self.knock_file],
                           env=self.env, cwd=workdir, capture_output=True, text=True, timeout=60)
        if r.returncode != 0 or not os.path.exists(self.knock_file):
            raise RuntimeError("knocker generate failed (%s): %s%s"
                               % (r.returncode, r.stdout, r.stderr))
        pool_ports = self._ports_in_knock_file()
        with self.net.inside("server"):
            self.daemon = Daemon(
                [os.path.join(common.VENV_BIN, "twistd"), "-n", "--pidfile=", "knockserver",
                 "--config", self.conf],
                os.path.join(workdir, "twistd-%d.out" % attempt), env=self.env, cwd=workdir)

        def listening():
            with self.net.inside("server"):
                return (common.tcp_listening(self.central)
                        and all(common.tcp_listening(p) for p in pool_ports))
        ok = common.wait_for(lambda: not self.daemon.alive() or listening(),
                             20, interval=0.05) and self.daemon.alive()
        if not ok:
            raise RuntimeError("knockserver did not start:\n" + self.daemon.log_text()[-3000:])
        self.client_conf = os.path.join(workdir, "knockclient.conf")
        write_client_conf(self.client_conf, self.server_endpoint(), self.knock_file,
                          os.path.join(workdir, "client-log", "client.log"))

    def server_endpoint(self):
        return "tcp:host=%s:port=%d" % (self.net.server_ip, self.central)

    def _ports_in_knock_file(self, enough=12):
        """Ports named by the client's knocks: all are pool ports, and with
        the default 1000 knocks of 6 from a pool of 100, the whole pool."""
        ports = set()
        with open(self.knock_file) as f:
            for line in f:
                line = line.strip()
                if line and line[0].isdigit() and " " in line:
                    ports.update(int(p) for p in line.split(" ", 1)[1].split(","))
                    if enough and len(ports) >= enough:
                        break
        return sorted(ports)

    def pool_ports(self):
        return self._ports_in_knock_file(enough=None)

    def one_run(self):
        if self.unchecked:
            # Forget that the file passed the whole-file check, as on the
            # first knock with a new file.
            try:
                os.unlink(self.knock_file + ".checked")
            except FileNotFoundError:
                pass
        return self._timed_client(self.client_argv(), env=self.env)

    def client_argv(self):
        return knocker_cli() + ["knock", "--server", self.server_endpoint(),
                                "--knock-file", self.knock_file]

    def flood_ports(self):
        # the pool itself (what a scan finds open): every flood connection
        # is a full hit the server must accept, record and close
        return [str(p) for p in self.pool_ports()]


class KnockerConfig(Knocker):
    """`knocker knock --config FILE`: what users type.  FILE is
    etc/knockclient.conf itself (comments and all) with its server,
    knock-file and log-file lines pointed at this run: so the config is read
    and parsed, and every attempt appended to the client log, as for a user."""
    name = "knocker-config"
    description = ("knocker (twistd knockserver), `knocker knock --config FILE` "
                   "(etc/knockclient.conf, log-file on)")

    def client_argv(self):
        return knocker_cli() + ["knock", "--config", self.client_conf]


CLIENT_CONF_TEMPLATE = os.path.join(common.REPO, "etc", "knockclient.conf")


def write_client_conf(path, server, knock_file, log_file, template=CLIENT_CONF_TEMPLATE):
    """etc/knockclient.conf with `server`, `knock-file` and `log-file` set;
    every other line (defaults, comments) as shipped."""
    import re
    try:
        with open(template) as f:
            text = f.read()
    except OSError:
        text = "[client]\n"
    values = {"server": server, "knock-file": knock_file, "log-file": log_file}
    for key, value in values.items():
        # the key's line, commented out or not (knock-file ships commented)
        text, n = re.subn(r"(?m)^#?[ \t]*%s[ \t]*=.*$" % re.escape(key),
                          lambda m, k=key, v=value: "%s = %s" % (k, v), text, count=1)
        if n == 0:
            text = text.replace("[client]\n", "[client]\n%s = %s\n" % (key, value), 1)
    with open(path, "w") as f:
        f.write(text)
    return path


def make_peers(tools, with_knocker=True):
    py = common.VENV_PY
    peers = [
        Baseline(tools, "spawn-true", ["/bin/true"], "fork+exec of /bin/true: process spawn floor"),
        Baseline(tools, "python-pass", [py, "-c", "pass"], "venv python3 -c pass"),
        Baseline(tools, "python-reactor", [py, "-c", "from twisted.internet import reactor"],
                 "venv python3 importing the Twisted reactor"),
        Knockd(tools),
        Fwknop(tools, "pcap"),
        Fwknop(tools, "udp"),
    ]
    if with_knocker:
        k = Knocker(tools)
        peers.append(k)
        # What users type: --config with a client config and its log file.
        peers.append(KnockerConfig(tools))
        # The same with a pool of 10,000 ports: each action's start must
        # not cost more with every descriptor the daemon holds.
        peers.append(Knocker(tools, pool_size=10000, name="knocker-pool10k"))
        # And the first knock with a file: its whole-file check not yet
        # remembered in FILE.checked.
        peers.append(Knocker(tools, name="knocker-first", unchecked=True))
        if not k.skip_reason:
            # What `knocker knock` imports before it connects (knocker.main
            # and knocker.client.blocking_driver: the whole client).
            # -I: from the installed package, not a source tree in the cwd.
            peers.insert(3, Baseline(tools, "knocker-import",
                                     [py, "-I", "-c", "import knocker.main, knocker.client.command"],
                                     "venv python3 importing the knock path",
                                     env=knocker_env()))
    return peers


# --------------------------------------------------------------------------
# runners

def rotate(peers, runs, pause, rng, deadline, warmup=1, log=print):
    """Round-robin runs over peers (order reshuffled each round)."""
    data = {p.name: {"samples": [], "exit": [], "failures": []} for p in peers}
    dead = set()
    for rnd in range(warmup + runs):
        if time.monotonic() > deadline:
            log("time bound reached after %d rounds" % rnd)
            break
        order = [p for p in peers if p.name not in dead]
        rng.shuffle(order)
        for p in order:
            try:
                s = p.one_run()
                if rnd >= warmup:
                    data[p.name]["samples"].append(s)
                    data[p.name]["exit"].append(p.last_exit_s)
            except RunFailed as e:
                if rnd >= warmup:
                    data[p.name]["failures"].append(str(e))
                log("  %s: run %d failed: %s" % (p.name, rnd, e))
                if isinstance(e, DaemonDied):
                    dead.add(p.name)
                time.sleep(p.recover_after)
            common.random_pause(pause[0], pause[1], rng)
        if rnd == warmup - 1:
            log("warm-up done; %d timed rounds" % runs)
    return data


def start_flood(tools, ports, rate, sources, seconds):
    argv = [tools["flood"], "-r", str(rate), "-t", str(seconds), "-n", str(int(rate * seconds) + 1),
            "-s", sources, "-x", "-R", "-c", "1024"] + list(ports)
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def stop_flood(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        out, err = proc.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"error": (err or out).strip()[-300:]}


def flood_scenario(peer, tools, runs, rate, pause, rng, deadline, modes, log=print):
    """Quiet and flooded knocks against one peer, interleaved in shuffled
    pairs. Each flooded run starts its own flood, lets it reach rate, knocks,
    then stops it and keeps the flood's own achieved-rate report."""
    sources = {"flood-other-src": "127.0.0.2-127.0.0.254", "flood-same-src": "127.0.0.1"}
    data = {m: {"samples": [], "exit": [], "failures": [], "flood_rates": []} for m in modes}
    cpu0 = peer.daemon_cpu()
    for i in range(runs):
        if peer.daemon is not None and not peer.daemon.alive():
            break
        if time.monotonic() > deadline:
            log("time bound reached after %d flood rounds" % i)
            break
        order = list(modes)
        rng.shuffle(order)
        for mode in order:
            flood = None
            failed = False
            try:
                if mode != "quiet":
                    flood = start_flood(tools, peer.flood_ports(), rate, sources[mode], 8)
                    time.sleep(rng.uniform(0.3, 0.5))  # let it reach its rate
                s = peer.one_run()
                data[mode]["samples"].append(s)
                data[mode]["exit"].append(peer.last_exit_s)
            except DaemonDied as e:
                data[mode]["failures"].append(str(e))
                log("  %s/%s: run %d: %s; scenario stopped" % (peer.name, mode, i, e))
                break
            except RunFailed as e:
                data[mode]["failures"].append(str(e))
                failed = True
                log("  %s/%s: run %d failed: %s" % (peer.name, mode, i, e))
            finally:
                if flood is not None:
                    rep = stop_flood(flood)
                    data[mode]["flood_rates"].append(rep.get("completed_per_s"))
                    if "error" in rep or rep.get("errors"):
                        data[mode].setdefault("flood_errors", []).append(rep)
            if failed or mode == "flood-same-src":
                # a same-source flood can leave a half-made attempt behind
                # that would spoil the next (quiet) run; let it expire
                time.sleep(peer.recover_after)
            common.random_pause(pause[0], pause[1], rng)
    cpu1 = peer.daemon_cpu()
    out = {}
    for mode, d in data.items():
        s = common.summarize(d["samples"], len(d["failures"]))
        rates = [r for r in d["flood_rates"] if r]
        if rates:
            s["flood_rate_p50"] = round(common.median(rates))
            s["flood_rate_min"] = round(min(rates))
        s["opened"] = "%d/%d" % (len(d["samples"]), len(d["samples"]) + len(d["failures"]))
        s["samples_ms"] = [round(x * 1000, 3) for x in d["samples"]]
        s["failure_reasons"] = sorted(set(d["failures"]))
        if d.get("flood_errors"):
            s["flood_errors"] = d["flood_errors"][:3]
        out[mode] = s
    if cpu0 is not None and cpu1 is not None:
        out["daemon_cpu_s"] = round(cpu1 - cpu0, 3)
    return out


# Entries left out over the veth unless named with --only: they measure
# nothing a network path changes (imports, the first-knock file check, a big
# pool), and each costs a daemon and time.
VETH_LEAVE_OUT = ("python-reactor", "knocker-import", "knocker-first", "knocker-pool10k")

# The targets for what users run (knocker-config), one run's p50s.
TARGET_VS_KNOCKD = 0.6
TARGET_OVER_FLOOR_MS = 5.0


def targets(entries):
    """knocker-config against knockd (time to open) and against the floor,
    `python -c pass` spawn to exit (its time to open and its own exit)."""
    kc, kd, floor = (entries.get(n) for n in ("knocker-config", "knockd", "python-pass"))
    out = {"vs_knockd_max": TARGET_VS_KNOCKD, "over_floor_max_ms": TARGET_OVER_FLOOR_MS}
    if not kc or "p50_ms" not in kc:
        return out
    if kd and "p50_ms" in kd:
        out["open_vs_knockd"] = round(kc["p50_ms"] / kd["p50_ms"], 3)
        out["open_vs_knockd_met"] = out["open_vs_knockd"] <= TARGET_VS_KNOCKD
        if kc.get("client_exit_p50_ms") is not None:
            # what `time knocker knock` shows, against knockd's door opening
            out["exit_vs_knockd_open"] = round(kc["client_exit_p50_ms"] / kd["p50_ms"], 3)
    if floor and "p50_ms" in floor:
        out["floor_p50_ms"] = floor["p50_ms"]
        out["open_minus_floor_ms"] = round(kc["p50_ms"] - floor["p50_ms"], 3)
        out["exit_minus_floor_ms"] = round(kc["client_exit_p50_ms"] - floor["p50_ms"], 3)
        out["exit_minus_floor_met"] = out["exit_minus_floor_ms"] <= TARGET_OVER_FLOOR_MS
    return out


def print_targets(t):
    if "open_vs_knockd" not in t and "exit_minus_floor_ms" not in t:
        return
    print("\nknocker-config (knocker knock --config), p50s of this run:")
    if "open_vs_knockd" in t:
        print("  time to open / knockd's time to open   %.2fx  (target <= %.1fx: %s)"
              % (t["open_vs_knockd"], TARGET_VS_KNOCKD,
                 "met" if t["open_vs_knockd_met"] else "NOT MET"))
        if "exit_vs_knockd_open" in t:
            print("  client exit / knockd's time to open    %.2fx" % t["exit_vs_knockd_open"])
    if "exit_minus_floor_ms" in t:
        print("  client exit - python-pass (%.2f ms)     %+.2f ms  (target <= +%.0f ms: %s)"
              % (t["floor_p50_ms"], t["exit_minus_floor_ms"], TARGET_OVER_FLOOR_MS,
                 "met" if t["exit_minus_floor_met"] else "NOT MET"))
        print("  time to open - python-pass             %+.2f ms" % t["open_minus_floor_ms"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=30, help="timed runs per entry (default 30)")
    ap.add_argument("--pause", default="0.05,0.35",
                    help="random pause between runs, LO,HI seconds (default 0.05,0.35)")
    ap.add_argument("--only", help="comma list of entry names to run")
    ap.add_argument("--skip", default="", help="comma list of entry names to leave out")
    ap.add_argument("--flood-runs", type=int, default=20,
                    help="runs per mode in the flood scenario (0 to skip)")
    ap.add_argument("--flood-rate", type=int, default=10000, help="flood connections/s")
    ap.add_argument("--flood-peers", default="knockd,knocker",
                    help="entries to run the flood scenario against")
    ap.add_argument("--same-src", action="store_true",
                    help="also flood knockd from the knocking client's own address")
    ap.add_argument("--max-seconds", type=float, default=1200, help="overall time bound")
    ap.add_argument("--seed", type=int, help="seed for order and pauses")
    ap.add_argument("--netns", action="store_true",
                    help="daemons in one network namespace, clients in another, joined by a "
                         "veth pair (10.77.0.1 / 10.77.0.2), instead of loopback; the flood "
                         "scenario is loopback-only and is skipped")
    ap.add_argument("--out", help="JSON results (default bench/results/peers.json, "
                                  "or peers-veth.json with --netns)")
    ap.add_argument("--keep", action="store_true", help="keep the daemons' temp dirs")
    ap.add_argument("--daemon-nofile", type=int,
                    help="soft RLIMIT_NOFILE for the daemons (e.g. 1024, a common service default)")
    args = ap.parse_args()
    if args.out is None:
        args.out = os.path.join(common.RESULTS, "peers-veth.json" if args.netns else "peers.json")
    if args.netns and args.flood_runs:
        print("--netns: no flood scenario (it floods loopback from 127.x sources)")
        args.flood_runs = 0
    # SIGTERM ends the run through the finally below: daemons stopped,
    # namespaces removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    pause = tuple(float(x) for x in args.pause.split(","))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    rng = random.Random(seed)
    deadline = time.monotonic() + args.max_seconds
    tools = common.ensure_built()
    common.Daemon.nofile = args.daemon_nofile

    peers = make_peers(tools)
    if args.only:
        wanted = set(args.only.split(","))
        peers = [p for p in peers if p.name in wanted]
    skip = set(filter(None, args.skip.split(",")))
    if args.netns and not args.only:
        # over the veth: the entries with a network path, and the floors
        skip |= set(VETH_LEAVE_OUT)
    peers = [p for p in peers if p.name not in skip]

    active, started, skipped = [], [], {}
    root = tempfile.mkdtemp(prefix="knocker-bench-")
    net = None
    result = {"machine": common.machine_info(), "seed": seed, "runs": args.runs,
              "pause_s": pause, "daemon_nofile": args.daemon_nofile, "clock": "CLOCK_MONOTONIC (harness spawn time and marker stamp)",
              "entries": {}, "skipped": skipped}
    try:
        net = netns.make("veth" if args.netns else "loopback")
        Peer.net = net
        result["network"] = net.describe()
        print("network: %s" % (
            "veth pair, daemons in %(server)s (10.77.0.1), clients in %(client)s (10.77.0.2)"
            % net.names if args.netns else "loopback (127.0.0.1, lo)"))
        active = common.set_up(peers, root, started, skipped)

        print("entries: %s; %d runs each, interleaved, pause %.2f-%.2fs, seed %d"
              % (", ".join(p.name for p in active), args.runs, pause[0], pause[1], seed))
        # the machine's stalls over the timed rounds only (not the set-up,
        # nor the floods below, which load the machine on purpose)
        stalls_from = common.pressure()
        data = rotate(active, args.runs, pause, rng, deadline)
        stalls = common.pressure_share(stalls_from, common.pressure())
        if stalls is not None:
            result["machine"]["stalls_pct"] = stalls

        rows = []
        ref = None
        for p in active:
            d = data[p.name]
            s = common.summarize(d["samples"], len(d["failures"]))
            ex = common.summarize(d["exit"])
            s["client_exit_p50_ms"] = ex.get("p50_ms")
            s["client_exit_p95_ms"] = ex.get("p95_ms")
            s["client_exit_samples_ms"] = [round(x * 1000, 3) for x in d["exit"]]
            s["description"] = p.description
            s["samples_ms"] = [round(x * 1000, 3) for x in d["samples"]]
            s["failure_reasons"] = sorted(set(d["failures"]))
            result["entries"][p.name] = s
            if p.name == "knockd" and d["samples"]:
                ref = s["p50_ms"]
            rows.append(dict(s, name=p.name))
        for r in rows:
            if ref and "p50_ms" in r:
                r["vs_knockd"] = "%.2fx" % (r["p50_ms"] / ref)
                result["entries"][r["name"]]["p50_vs_knockd"] = round(r["p50_ms"] / ref, 3)
        common.print_table(rows, [("name", "entry"), ("n", "n"), ("failures", "fail"),
                                  ("p50_ms", "p50 ms"), ("p95_ms", "p95 ms"),
                                  ("min_ms", "min ms"), ("max_ms", "max ms"),
                                  ("client_exit_p50_ms", "exit p50"),
                                  ("client_exit_p95_ms", "exit p95"), ("vs_knockd", "p50/knockd")],
                           title="\ntime to open (baselines: time to exit), ms; exit: client "
                                 "spawn to exit [%s]" % net.mode)
        result["targets"] = targets(result["entries"])
        print_targets(result["targets"])

        if args.flood_runs > 0:
            result["flood"] = {"rate_target": args.flood_rate, "peers": {}}
            flood_rows = []
            for p in active:
                if p.name not in args.flood_peers.split(",") or not p.flood_ports():
                    continue
                modes = ["quiet", "flood-other-src"]
                if args.same_src and p.same_src_flood:
                    modes.append("flood-same-src")
                fp = p.flood_ports()
                print("\nflood scenario: %s, %d conn/s at %s, %d runs per mode"
                      % (p.name, args.flood_rate,
                         fp[0] if len(fp) == 1 else "its %d pool ports" % len(fp),
                         args.flood_runs))
                r = flood_scenario(p, tools, args.flood_runs, args.flood_rate, pause, rng,
                                   deadline, modes)
                result["flood"]["peers"][p.name] = r
                for mode in modes:
                    flood_rows.append(dict(r[mode], name="%s %s" % (p.name, mode)))
            if flood_rows:
                common.print_table(flood_rows, [
                    ("name", "entry / mode"), ("opened", "opened"), ("p50_ms", "p50 ms"),
                    ("p95_ms", "p95 ms"), ("max_ms", "max ms"),
                    ("flood_rate_p50", "flood conn/s p50"), ("flood_rate_min", "min")],
                    title="\nunder a connect flood (other-src: 127.0.0.2-254; same-src: 127.0.0.1)")
        for p in active:
            cpu = p.daemon_cpu()
            if cpu is not None:
                result["entries"][p.name]["daemon_cpu_total_s"] = round(cpu, 3)
    finally:
        common.clean_up([p.teardown for p in started]
                        + ([net.destroy] if net is not None else []), root, args.keep)
    result["machine"]["loadavg_end"] = common.machine_info().get("loadavg")
    stalls = result["machine"].get("stalls_pct")
    if stalls is not None:
        print("\nthe machine during the timed rounds (/proc/pressure, share of their wall "
              "time): " + common.stalls_text(stalls))
    common.write_result(args.out, result)


if __name__ == "__main__":
    main()
