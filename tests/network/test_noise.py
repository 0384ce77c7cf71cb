"""
Internet noise against the daemon on a real network (docs/spec.md section
5, lockouts): many addresses making full TCP connections to pool ports, one
address holding idle connections to the central port, a failed knock, a
source that keeps failing.

What an administrator checks: with the default ``lockout-scope = knock``
the noise locks out only its own sources and alice still gets in; with
``global`` the same noise shuts the door (the documented trade-off, and
the daemon says so at start); a failed *knock* still locks everyone; a
source's second lockout lasts twice its first.

The noise and the idle connections come from helpers in this module, run
inside the attacker namespace as ``python -m tests.network.test_noise
noise|idle ...`` (see L{main}); they use only the standard library and every
one of their loops is bounded in count and in time.
"""

from __future__ import annotations

import json
import random
import select
import socket
import subprocess
import sys
import time

from . import netns
from .nsdaemon import CENTRAL, DaemonInNamespace

#: Extra IPv4 addresses of the attacker: 10.231.0.100 - 10.231.0.159.
NOISE_ADDRESSES = [f"10.231.0.{host}" for host in range(100, 160)]

#: (connections a second, seconds): about 1/s, then 5/s, then 20/s.
NOISE_SCHEDULE = ((1, 6), (5, 8), (20, 6))

KNOCKS = 8
KNOCK_PERIOD = 2.0

IDLE_CONNECTIONS = 100
PER_SOURCE = 8  # max-connections-per-source, the default
PLACES = 64  # max-connections, the default

GLOBAL_WARNING = "lockout-scope = global on"


# -- the helpers run in the attacker namespace ----------------------------------


def noise(host: str, ports: list[int], addresses: list[str],
          schedule: list[tuple[float, float]], seed: int) -> dict:
    """
    Full TCP connections to random C{ports} of C{host}, each from the next
    of C{addresses} (shuffled, then taken in turn), at C{rate} a second for
    C{seconds}, for each C{(rate, seconds)} of C{schedule}.  Each connection
    waits (2 s at most) for the server to close it.  A phase ends after its
    planned count or 2 s past its time, whichever comes first.
    """
    rng = random.Random(seed)
    order = list(addresses)
    rng.shuffle(order)
    phases, connections = [], []
    for rate, seconds in schedule:
        planned = int(rate * seconds)
        start = time.monotonic()
        outcomes: dict[str, int] = {}
        made = 0
        for k in range(planned):
            due = start + k / rate
            now = time.monotonic()
            if now > start + seconds + 2:
                break
            if due > now:
                time.sleep(due - now)
            source = order[len(connections) % len(order)]
            port = rng.choice(ports)
            outcome = _noise_connection(source, host, port)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            connections.append((source, port, outcome))
            made += 1
        elapsed = time.monotonic() - start
        phases.append({"rate": rate, "seconds": seconds, "planned": planned, "made": made,
                       "elapsed": round(elapsed, 3),
                       "achieved": round(made / elapsed, 2) if elapsed else 0.0,
                       "outcomes": outcomes})
    return {"phases": phases, "connections": connections,
            "sources": sorted({source for source, _, _ in connections})}


def _noise_connection(source: str, host: str, port: int) -> str:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    try:
        sock.bind((source, 0))
        sock.connect((host, port))
        try:
            while sock.recv(64):
                pass
        except ConnectionResetError:
            pass
        return "ok"
    except ConnectionRefusedError:
        return "refused"
    except (socket.timeout, TimeoutError):
        return "timeout"
    except OSError as error:
        return f"error: {error}"
    finally:
        sock.close()


def _idle_state(sock: socket.socket) -> str:
    """
    C{idle} (open, nothing sent to us), or what the server did: C{ERROR ...}
    (its line), C{closed} (end of file) or C{reset}.
    """
    readable, _, _ = select.select([sock], [], [], 0)
    if not readable:
        return "idle"
    try:
        data = sock.recv(4096, socket.MSG_PEEK)
    except OSError:
        return "reset"
    if not data:
        return "closed"
    return data.decode("ascii", "replace").strip()


def _count(states: list[str]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for state in states:
        counted[state] = counted.get(state, 0) + 1
    return counted


def idle(host: str, port: int, count: int, sources: list[str] | None = None) -> int:
    """
    Open C{count} connections to C{host}:C{port} and send nothing on them,
    from each of C{sources} in turn if given.  Prints one JSON line once a
    second has passed after the last one: how many connected and what
    state they are in (and, with C{sources}, the states by source).  Then,
    for each line on stdin (60 s at most each), prints their states again;
    end of file closes them all.
    """
    sockets, failed, bound = [], 0, []
    for n in range(count):
        source = sources[n % len(sources)] if sources else None
        try:
            sockets.append(socket.create_connection(
                (host, port), timeout=5, source_address=(source, 0) if source else None))
            bound.append(source)
        except OSError:
            failed += 1

    def report(**fields) -> None:
        states = [_idle_state(s) for s in sockets]
        fields["states"] = _count(states)
        if sources:
            fields["by_source"] = {source: _count([state for state, at in zip(states, bound)
                                                   if at == source]) for source in sources}
        print(json.dumps(fields), flush=True)

    time.sleep(1.0)
    report(connected=len(sockets), failed=failed)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        readable, _, _ = select.select([sys.stdin], [], [], deadline - time.monotonic())
        if not readable or not sys.stdin.readline():
            break
        report()
    for sock in sockets:
        sock.close()
    return 0


def main(argv: list[str]) -> int:
    if len(argv) == 6 and argv[0] == "noise":
        _, host, ports, addresses, schedule, seed = argv
        report = noise(
            host, [int(p) for p in ports.split(",")], addresses.split(","),
            [tuple(float(x) for x in phase.split(":")) for phase in schedule.split(",")],
            int(seed),
        )
        print(json.dumps(report), flush=True)
        return 0
    if len(argv) in (4, 5) and argv[0] == "idle":
        return idle(argv[1], int(argv[2]), int(argv[3]),
                    argv[4].split(",") if len(argv) == 5 else None)
    print("usage: noise HOST PORTS ADDRESSES RATE:SECONDS,... SEED"
          " | idle HOST PORT COUNT [ADDRESSES]", file=sys.stderr)
    return 2


# -- the tests ---------------------------------------------------------------------


class NoiseTests(DaemonInNamespace):
    """
    The daemon of L{DaemonInNamespace} (recorder as on-success), on the
    daemon's own default C{lockout-scope} unless a test sets it.
    """

    # -- helpers -------------------------------------------------------------

    def helper(self, *args: str, **kwargs) -> subprocess.Popen:
        return self.net.spawn(
            "attacker", [sys.executable, "-m", "tests.network.test_noise", *args],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs,
        )

    def add_noise_addresses(self) -> None:
        ip, eth0 = self.net.ip, "eth0"
        batch = "".join(f"addr add {address}/24 dev {eth0}\n" for address in NOISE_ADDRESSES)
        self.net.run("attacker", [ip, "-batch", "-"], input=batch)
        shown = json.loads(self.net.run("attacker", [ip, "-j", "-4", "addr", "show", "dev",
                                                     eth0]).stdout)
        have = {info["local"] for info in shown[0]["addr_info"]}
        self.assertTrue(set(NOISE_ADDRESSES) <= have, have)

    def start_noise(self) -> subprocess.Popen:
        """
        The noise generator, from L{NOISE_ADDRESSES} to the pool, after its
        first hit reached the audit log.
        """
        self.add_noise_addresses()
        pool = self.status()["pool"]
        self.assertEqual(len(pool), 100)
        generator = self.helper(
            "noise", self.server_address(), ",".join(map(str, pool)), ",".join(NOISE_ADDRESSES),
            ",".join(f"{rate}:{seconds}" for rate, seconds in NOISE_SCHEDULE), "1729",
        )
        self.wait_until(lambda: self.noise_hits(), 15, "the noise's first hit")
        return generator

    def finish_noise(self, generator: subprocess.Popen) -> dict:
        budget = sum(seconds for _, seconds in NOISE_SCHEDULE) + 20
        try:
            out, err = generator.communicate(timeout=budget)
        except subprocess.TimeoutExpired:
            self.fail(f"the noise generator did not finish within {budget}s")
        self.assertEqual(generator.returncode, 0, err)
        report = json.loads(out)
        for phase in report["phases"]:
            self.assertEqual(phase["made"], phase["planned"], report["phases"])
            self.assertEqual(phase["outcomes"], {"ok": phase["made"]}, report["phases"])
        self.assertGreaterEqual(len(report["sources"]), 50)
        self.assertTrue(set(report["sources"]) <= set(NOISE_ADDRESSES))
        return report

    def noise_hits(self) -> list[dict]:
        noisy = set(NOISE_ADDRESSES)
        return [e for e in self.audit("hit") if e["ip"] in noisy]

    def knock_during_noise(self) -> list[subprocess.CompletedProcess]:
        """
        L{KNOCKS} knocks from the client, one every L{KNOCK_PERIOD} seconds.
        """
        results, start = [], time.monotonic()
        for i in range(KNOCKS):
            results.append(self.knock())
            pause = start + (i + 1) * KNOCK_PERIOD - time.monotonic()
            if pause > 0 and i + 1 < KNOCKS:
                time.sleep(pause)
        return results

    def daemon_output(self) -> str:
        with open(self.daemon_log, encoding="utf-8", errors="replace") as handle:
            return handle.read()

    def stray_hit(self, role: str = "attacker") -> None:
        """
        One full connection from C{role} to a pool port: accepted and closed.
        """
        port = self.status()["pool"][0]
        outcome = self.net.connect(role, self.server_address(), port)
        self.assertNotIn(outcome, ("timeout", "refused"))

    def report(self, text: str) -> None:
        # the figures, for whoever runs this with -s (or reads a failure)
        print(f"\n[{self.id().rsplit('.', 1)[-1]}] {text}")

    # -- tests -----------------------------------------------------------------

    def test_noise_from_many_addresses_does_not_shut_the_door(self) -> None:
        """
        Default configuration (lockout-scope = knock): 60 addresses connect
        to random pool ports at about 1, 5 and then 20 connections a second;
        meanwhile every one of alice's knocks opens, each noise address is
        locked out on its own (scope "source"), and nothing locks everyone.
        """
        self.start_server()
        start = self.audit("start")[0]
        self.assertEqual(start["lockout_scope"], "knock", "the default scope")
        generator = self.start_noise()
        results = self.knock_during_noise()
        noise = self.finish_noise(generator)
        opened = sum(1 for r in results if r.returncode == 0)
        self.report(f"scope knock: {opened}/{len(results)} knocks opened; noise "
                    f"{[(p['made'], p['achieved']) for p in noise['phases']]} "
                    f"(connections, per second) from {len(noise['sources'])} addresses")
        for i, result in enumerate(results, 1):
            self.assertEqual(result.returncode, 0,
                             f"knock {i}: {result.stdout}{result.stderr}\n{self.daemon_tail()}")
            self.assertIn("OPEN", result.stdout)

        client = self.net.address4["client"]
        self.assertEqual([(e["ip"], e["index"]) for e in self.audit("open")],
                         [(client, i) for i in range(1, KNOCKS + 1)])
        opens = self.audit("open")
        hits = self.noise_hits()
        self.assertEqual(len(hits), len(noise["connections"]), "one connection, one hit")
        during = [e for e in hits if opens[0]["time"] < e["time"] < opens[-1]["time"]]
        self.assertGreaterEqual(len(during), 30, "the knocks were not during the noise")
        self.assertGreater(hits[-1]["time"], opens[-1]["time"],
                           "the noise stopped before the last knock")

        lockouts = self.audit("lockout")
        self.assertEqual([e for e in lockouts if e["scope"] != "source"], [])
        locked_sources = {e["source"] for e in lockouts}
        self.assertEqual(locked_sources, set(noise["sources"]),
                         "each noise address, and only they, locked out")
        self.assertEqual(len(lockouts), len(locked_sources), "one lockout each (60 s)")
        self.assertEqual({(e["reason"], e["seconds"], e["step"]) for e in lockouts},
                         {("no-slot", 60.0, 0)})
        self.assertEqual(self.audit("fail"), [])
        self.assertEqual(self.audit("locked"), [])
        self.assertNotIn(GLOBAL_WARNING, self.daemon_output())
        # knocker status shows the source lockouts (saved in a batch a second)
        self.wait_until(lambda: set(self.status()["lockouts"]) == locked_sources, 5,
                        "the source lockouts in knocker status")

    def test_noise_shuts_the_door_under_global_scope(self) -> None:
        """
        lockout-scope = global: the same noise; the first stray connection
        locks everyone out, so every one of alice's knocks gets LOCKED
        (exit 5), and the daemon warned at start that global scope on a
        non-loopback interface does exactly this.
        """
        self.start_server(lockout_scope="global")
        output = self.daemon_output()
        self.assertIn(f"{GLOBAL_WARNING} {self.server_address()}", output)
        self.assertIn("locks everyone out", output)
        generator = self.start_noise()
        results = self.knock_during_noise()
        noise = self.finish_noise(generator)
        outcomes = [r.returncode for r in results]
        self.report(f"scope global: {outcomes.count(0)}/{len(results)} knocks opened, "
                    f"{outcomes.count(5)} LOCKED; noise "
                    f"{[(p['made'], p['achieved']) for p in noise['phases']]} "
                    f"(connections, per second) from {len(noise['sources'])} addresses")
        for i, result in enumerate(results, 1):
            self.assertEqual(result.returncode, 5,
                             f"knock {i}: {result.stdout}{result.stderr}\n{self.daemon_tail()}")
            self.assertIn("LOCKED", result.stderr)

        hits = self.noise_hits()
        lockouts = self.audit("lockout")
        self.assertEqual([(e["ip"], e["source"], e["scope"], e["reason"]) for e in lockouts],
                         [(hits[0]["ip"], "*", "global", "no-slot")],
                         "one lockout, by the first noise hit; later hits do not extend it")
        self.assertEqual({e["outcome"] for e in hits[1:]}, {"locked"})
        client = self.net.address4["client"]
        self.assertEqual([e["ip"] for e in self.audit("locked")], [client] * KNOCKS)
        self.assertEqual(self.audit("grant"), [])
        self.assertEqual(self.audit("open"), [])
        self.assertEqual(list(self.status()["lockouts"]), ["*"])

    def test_idle_connections_from_one_address_do_not_take_every_place(self) -> None:
        """
        The attacker opens 100 connections to the central port and sends
        nothing (handshake-timeout = 30, so none is reaped during the test):
        8 (max-connections-per-source) are held idle, the rest get ERROR
        too-many-connections; alice's knock still opens while the 8 stay
        open.
        """
        self.start_server(handshake_timeout=30)
        holder = self.helper("idle", self.server_address(), str(CENTRAL),
                             str(IDLE_CONNECTIONS), stdin=subprocess.PIPE)
        line = netns.read_line(holder, 60)
        self.assertTrue(line, "the idle connections' holder said nothing")
        first = json.loads(line)
        self.report(f"idle: {first}")
        self.assertEqual(first["connected"], IDLE_CONNECTIONS, first)

        result = self.knock()
        self.assertEqual(result.returncode, 0,
                         f"{result.stdout}{result.stderr}\nidle connections: {first}\n"
                         f"{self.daemon_tail()}")
        self.assertIn("OPEN", result.stdout)
        self.assertEqual(first["states"], {"idle": PER_SOURCE,
                                           "ERROR too-many-connections":
                                               IDLE_CONNECTIONS - PER_SOURCE}, first)

        holder.stdin.write("again\n")
        holder.stdin.flush()
        line = netns.read_line(holder, 10)
        self.assertTrue(line, "the idle connections' holder said nothing the second time")
        self.assertEqual(json.loads(line)["states"].get("idle"), PER_SOURCE,
                         "the idle connections did not last through the knock")
        holder.stdin.close()

        attacker, client = self.net.address4["attacker"], self.net.address4["client"]
        errors = self.audit("error")
        self.assertEqual([(e["ip"], e["reason"]) for e in errors],
                         [(attacker, "too-many-connections")] * (IDLE_CONNECTIONS - PER_SOURCE))
        self.assertEqual([(e["ip"], e["index"]) for e in self.audit("open")], [(client, 1)])
        self.assertEqual(self.audit("lockout"), [])

    def test_idle_connections_from_a_few_addresses_do_not_shut_the_door(self) -> None:
        """
        Eight attacker addresses hold eight idle connections each, every
        one of the 64 places (handshake-timeout = 30, so none is reaped
        during the test).  alice's knock still opens: her connection takes
        the place of the oldest idle one of a busiest source, which gets
        ERROR too-many-connections; the other 63 stay open.
        """
        self.start_server(handshake_timeout=30)
        self.add_noise_addresses()
        sources = NOISE_ADDRESSES[:PLACES // PER_SOURCE]
        holder = self.helper("idle", self.server_address(), str(CENTRAL), str(PLACES),
                             ",".join(sources), stdin=subprocess.PIPE)
        line = netns.read_line(holder, 60)
        self.assertTrue(line, "the idle connections' holder said nothing")
        first = json.loads(line)
        self.report(f"idle: {first['states']}")
        self.assertEqual((first["connected"], first["states"]), (PLACES, {"idle": PLACES}), first)

        result = self.knock()
        self.assertEqual(result.returncode, 0,
                         f"{result.stdout}{result.stderr}\n{self.daemon_tail()}")
        self.assertIn("OPEN", result.stdout)

        holder.stdin.write("again\n")
        holder.stdin.flush()
        line = netns.read_line(holder, 10)
        self.assertTrue(line, "the idle connections' holder said nothing the second time")
        after = json.loads(line)
        holder.stdin.close()
        self.assertEqual(after["states"], {"idle": PLACES - 1,
                                           "ERROR too-many-connections": 1}, after)
        self.assertEqual(after["by_source"][sources[0]],
                         {"idle": PER_SOURCE - 1, "ERROR too-many-connections": 1},
                         "the oldest connection gave way")
        client = self.net.address4["client"]
        self.assertEqual([(e["ip"], e["reason"]) for e in self.audit("error")],
                         [(sources[0], "too-many-connections")])
        self.assertEqual([(e["ip"], e["index"]) for e in self.audit("open")], [(client, 1)])
        self.assertEqual(self.audit("lockout"), [])

    def test_a_failed_knock_still_locks_everyone(self) -> None:
        """
        Default scope: alice, holding knock 1, hits a wrong pool port; her
        slot ends (FAIL wrong-port) and the whole server is locked out, so
        the attacker's address, which never failed anything, gets LOCKED.
        """
        self.start_server()
        self.assertEqual(self.audit("start")[0]["lockout_scope"], "knock")
        pool = self.status()["pool"]
        held = self.hold()
        self.assertEqual(held.index, 1, held.first)
        wrong = next(port for port in pool if port != held.ports[0])
        self.assertNotIn(self.net.connect("client", self.server_address(), wrong),
                         ("timeout", "refused"))
        self.assertEqual(held.verdict("wait"), "FAIL wrong-port")

        client, attacker = self.net.address4["client"], self.net.address4["attacker"]
        # The FAIL goes out first; the lockout's line follows once the
        # lockout is saved (an fsync), so it may be a moment behind.
        self.wait_until(lambda: self.audit("lockout"), 5, "the lockout")
        self.assertEqual(
            [(e["ip"], e["source"], e["scope"], e["reason"], e["seconds"])
             for e in self.audit("lockout")],
            [(client, "*", "global", "wrong-port", 60.0)],
        )
        result = self.knock("attacker")
        self.assertEqual(result.returncode, 5, result.stdout + result.stderr)
        self.assertIn("LOCKED", result.stderr)
        locked = self.audit("locked")
        self.assertEqual([e["ip"] for e in locked], [attacker])
        self.assertGreater(locked[0]["retry_after"], 50)
        self.assertEqual([e for e in self.audit("hit") if e["ip"] == attacker], [])
        self.assertEqual(list(self.status()["lockouts"]), ["*"])
        self.assertEqual(self.audit("grant")[-1]["ip"], client, "no grant to the attacker")

    def test_a_sources_second_lockout_lasts_twice_its_first(self) -> None:
        """
        lockout = 2: the attacker's stray hit locks it out for 2 s (step 0);
        after that ends, another stray hit locks it out for 4 s (step 1), so
        2.5 s later its handshake still gets LOCKED; once the 4 s are over,
        it may knock again (it has alice's file: OPEN).
        """
        self.start_server(lockout=2)
        attacker = self.net.address4["attacker"]

        self.stray_hit()
        self.wait_until(lambda: self.audit("lockout"), 5, "the first lockout")
        first = self.audit("lockout")[0]
        self.assertEqual((first["ip"], first["source"], first["scope"], first["reason"],
                          first["seconds"], first["step"]),
                         (attacker, attacker, "source", "no-slot", 2.0, 0))
        time.sleep(2.3)

        self.stray_hit()
        self.wait_until(lambda: len(self.audit("lockout")) == 2, 5, "the second lockout")
        seen = time.monotonic()
        second = self.audit("lockout")[1]
        self.assertEqual((second["ip"], second["source"], second["scope"], second["reason"],
                          second["seconds"], second["step"]),
                         (attacker, attacker, "source", "no-slot", 4.0, 1))
        self.assertEqual([e["outcome"] for e in self.audit("hit")], ["no-slot", "no-slot"],
                         "the second hit came after the first lockout had ended")

        time.sleep(max(0.0, seen + 2.5 - time.monotonic()))
        result = self.knock("attacker")
        self.assertEqual(result.returncode, 5, result.stdout + result.stderr)
        self.assertIn("LOCKED", result.stderr)
        self.assertEqual([e["ip"] for e in self.audit("locked")], [attacker])

        time.sleep(max(0.0, seen + 4.2 - time.monotonic()))
        result = self.knock("attacker")
        self.assertEqual(result.returncode, 0,
                         f"{result.stdout}{result.stderr}\n{self.daemon_tail()}")
        self.assertEqual([(e["ip"], e["index"]) for e in self.audit("open")], [(attacker, 1)])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
