"""
A fleet (docs/spec.md section 11, docs/fleet.md) for real: two
C{twistd knockserver} gateways on 127.0.0.2 and 127.0.0.3 with one pool in
one throwaway PostgreSQL cluster (tests/helpers/postgres.py), the real
C{knocker generate}, C{status} and C{knock}.
"""

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time

from twisted.trial.unittest import TestCase

from knocker.core import handshake as hs
from knocker.core.knockfile import parse_knockfile
from knocker.daemon.audit import read_audit
from knocker.files import read_private
from tests.helpers import postgres
from tests.helpers.processes import Daemon, knocker, read_lines, write_config, write_recorder

HOSTS = ("127.0.0.2", "127.0.0.3")


def _free_port(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def handshake(host: str, port: int, client: str, secret: bytes, timeout: float = 10,
              source: str = "127.0.0.1"):
    """
    HELLO and PROOF on a gateway's central port from C{source}; the reply
    line, and the open socket (a GRANT's slot lives while it stays open).
    """
    sock = socket.create_connection((host, port), timeout=timeout,
                                    source_address=(source, 0))
    reader = sock.makefile("rb")
    sock.sendall(hs.format_hello(client))
    challenge = reader.readline().decode().split()
    nonce = challenge[-1]
    sock.sendall(hs.format_proof(hs.hello_mac(secret, client, nonce)))
    reply = reader.readline().decode().strip()
    return reply, sock


class FleetCase(TestCase):
    timeout = 180
    skip = postgres.skip_reason()
    extra_config: dict = {}
    """More keys for both gateways' configurations."""

    def setUp(self):
        self.cluster = postgres.Cluster()
        self.addCleanup(self.cluster.destroy)
        self.cluster.start()
        self.db = self.cluster.new_database()
        self.dir = tempfile.mkdtemp(prefix="knocker-fleet-")
        self.addCleanup(shutil.rmtree, self.dir, ignore_errors=True)
        self.key_file = os.path.join(self.dir, "fleet.key")
        self.gateways: list[Daemon] = []
        self.addCleanup(self._stop_all)
        self.success, _ = write_recorder(self.dir, "on-success")
        self.confs = []
        self.ports = []
        self.closed = []
        for n, host in enumerate(HOSTS):
            home = os.path.join(self.dir, f"g{n}")
            os.mkdir(home)
            on_close, closed = write_recorder(home, "on-close")
            self.closed.append(closed)
            port = _free_port(host)
            self.ports.append(port)
            self.confs.append(write_config(
                os.path.join(home, "server.conf"), "server",
                central=f"tcp:{port}:interface={host}", interface=host, state_dir="state",
                pool_size=20, pool_range="3000-9999", on_success=self.success,
                on_close=on_close, open_duration=300,
                audit_log="audit.log", knock_window=5, lockout=3, max_concurrent=50,
                database=self.cluster.uri(self.db), database_key_file=self.key_file,
                gateway=f"gw-{n}", **self.extra_config))

    def _stop_all(self):
        for daemon in self.gateways:
            daemon.stop()

    def generate(self, client="alice", knocks=200, ports=4) -> str:
        out = os.path.join(self.dir, client + ".knock")
        done = knocker("generate", client, "--config", self.confs[0], "--knocks", str(knocks),
                       "--ports", str(ports), "-o", out)
        self.assertEqual(done.returncode, 0, done.stderr)
        return out

    def start(self, n: int) -> Daemon:
        home = os.path.dirname(self.confs[n])
        daemon = Daemon(self.confs[n], os.path.join(home, "audit.log"), home)
        daemon.wait_ready()
        if n < len(self.gateways):
            self.gateways[n] = daemon
        else:
            self.gateways.append(daemon)
        return daemon

    def audit(self, n: int, event: str | None = None) -> list[dict]:
        path = os.path.join(os.path.dirname(self.confs[n]), "audit.log")
        events = read_audit(path) if os.path.exists(path) else []
        return events if event is None else [e for e in events if e["event"] == event]

    def knock(self, knock_file, server) -> object:
        return knocker("knock", "--server", server, "--knock-file", knock_file,
                       "--log-file", os.path.join(self.dir, "client.log"))

    def locked_after(self, n, secret, started, limit, source="127.0.0.1") -> float | None:
        """
        Seconds from C{started} until gateway C{n} answers C{source}'s
        handshake with LOCKED, or C{None} if not within C{limit}.
        """
        while time.monotonic() - started < limit:
            reply, sock = handshake(HOSTS[n], self.ports[n], "alice", secret, source=source)
            sock.close()
            if reply.startswith("LOCKED"):
                return time.monotonic() - started
            time.sleep(0.05)
        return None

    def endpoint(self, n: int) -> str:
        return f"tcp:host={HOSTS[n]}:port={self.ports[n]}"

    def two_gateways(self):
        """Alice generated, both gateways up and listening: her file."""
        knock_file = self.generate()
        kf = parse_knockfile(open(knock_file).read(), knock_file)
        self.start(0)
        self.start(1)
        time.sleep(0.5)  # the listeners are up
        return kf

    def fail_a_knock(self, n, kf) -> None:
        """
        A GRANT on gateway C{n}, then a wrong port: with lockout-scope =
        knock, the whole server is locked out.
        """
        reply, sock = handshake(HOSTS[n], self.ports[n], "alice", kf.secret)
        self.assertTrue(reply.startswith("GRANT"), reply)
        index = int(reply.split()[1])
        wrong = next(p for p in kf_pool(self) if p != kf.knocks[index - 1][0])
        try:
            socket.create_connection((HOSTS[n], wrong), timeout=2).close()
        except OSError:
            pass
        sock.close()


class FleetTests(FleetCase):

    def test_knocks_alternate_between_gateways(self):
        """
        One client file, knocked alternately at either gateway: every knock
        opens, and the numbers run on across both (one counter).
        """
        knock_file = self.generate()
        self.start(0)
        self.start(1)
        for turn in range(4):
            result = self.knock(knock_file, self.endpoint(turn % 2))
            self.assertEqual(result.returncode, 0, result.stdout + result.stderr
                             + self.gateways[turn % 2].log()[-2000:])
            self.assertIn("OPEN", result.stdout)
        grants = sorted(e["index"] for n in (0, 1) for e in self.audit(n, "grant"))
        self.assertEqual(grants, [1, 2, 3, 4])
        # A client generated while the gateways run: each reads its copy.
        bob = self.generate("bob")
        for n in (1, 0):
            result = self.knock(bob, self.endpoint(n))
            self.assertIn("OPEN", result.stdout, result.stderr)
        done = knocker("status", "--config", self.confs[1], "--json")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn('"left": 196', done.stdout)
        self.assertIn('"database": "postgresql:///', done.stdout)
        done = knocker("status", "--config", self.confs[0])
        self.assertIn("state: postgresql:///", done.stdout)

    def test_contended_grants_are_distinct_and_survive_kill9(self):
        """
        Many handshakes for one client at once on both gateways: every
        GRANT carries its own number; after kill -9 of one gateway and its
        restart, no number is granted again.
        """
        knock_file = self.generate(knocks=500)
        kf = parse_knockfile(open(knock_file).read(), knock_file)
        self.start(0)
        self.start(1)
        granted, lock = [], threading.Lock()

        def worker(n, source, count):
            for _ in range(count):
                # Each worker its own address: its own slot, so no BUSY.
                reply, sock = handshake(HOSTS[n], self.ports[n], "alice", kf.secret,
                                        source=source)
                sock.close()  # abandoned: the number stays burned, no lockout
                with lock:
                    granted.append(reply)

        def round_(count):
            threads = [threading.Thread(target=worker, args=(n, f"127.0.1.{n * 10 + t}", count))
                       for n in (0, 1) for t in range(4)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

        round_(10)
        self.gateways[0].kill9()
        self.start(0)
        round_(5)
        # The database restarted under both: some handshakes get ERROR
        # (a connection that was cut), none a number given before.
        self.cluster.stop()
        self.cluster.start()
        round_(5)
        numbers = [int(reply.split()[1]) for reply in granted if reply.startswith("GRANT")]
        self.assertEqual(len(numbers), len(set(numbers)), "a number granted twice")
        self.assertGreaterEqual(len(numbers), 130, [r for r in granted if "GRANT" not in r])
        self.assertTrue(all(r.startswith(("GRANT", "ERROR server-error")) for r in granted),
                        set(r[:10] for r in granted))

    def test_global_lockout_spreads_within_a_second(self):
        """
        A failed knock on one gateway locks the whole server out; the other
        refuses (LOCKED) within a second.
        """
        kf = self.two_gateways()
        started = time.monotonic()
        self.fail_a_knock(0, kf)
        seen = self.locked_after(1, kf.secret, started, 3)
        self.assertIsNotNone(seen, "gateway 2 never refused")
        self.assertLess(seen, 1.0)

    def test_source_lockout_is_shared(self):
        """
        A stray hit on gateway 1's pool locks its source out on gateway 2
        too (saved in the second's batch, then a notice to read again).
        """
        knock_file = self.generate()
        kf = parse_knockfile(open(knock_file).read(), knock_file)
        self.start(0)
        self.start(1)
        time.sleep(0.5)
        stray = "127.0.1.77"
        started = time.monotonic()
        sock = socket.create_connection((HOSTS[0], kf_pool(self)[0]), timeout=2,
                                        source_address=(stray, 0))
        sock.close()
        seen = self.locked_after(1, kf.secret, started, 5, source=stray)
        self.assertIsNotNone(seen, "gateway 2 never refused the source")
        self.assertLess(seen, 2.5, "one batch (1 s) and a notice")
        reply, other = handshake(HOSTS[1], self.ports[1], "alice", kf.secret)
        other.close()
        self.assertTrue(reply.startswith("GRANT"), "other sources still knock: " + reply)

    def test_failover_to_second_endpoint(self):
        """
        A client whose first endpoint is dead knocks at the second.
        """
        knock_file = self.generate()
        self.start(1)
        dead = f"tcp:host={HOSTS[0]}:port={_free_port(HOSTS[0])}"
        result = self.knock(knock_file, f"{dead} {self.endpoint(1)}")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        self.assertIn("OPEN", result.stdout)

    def test_fails_closed_and_recovers(self):
        """
        With the cluster stopped the gateway grants nothing, still records
        hits, says so; started again, it grants again by itself.
        """
        knock_file = self.generate()
        kf = parse_knockfile(open(knock_file).read(), knock_file)
        self.start(0)
        port = kf_pool(self)[0]
        self.cluster.stop()
        reply, sock = handshake(HOSTS[0], self.ports[0], "alice", kf.secret)
        sock.close()
        self.assertEqual(reply, "ERROR server-error")
        socket.create_connection((HOSTS[0], port), timeout=2).close()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not self.audit(0, "hit"):
            time.sleep(0.1)
        self.assertTrue(self.audit(0, "hit"), "hits are recorded without the database")
        self.cluster.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            reply, sock = handshake(HOSTS[0], self.ports[0], "alice", kf.secret)
            sock.close()
            if reply.startswith(("GRANT", "LOCKED")):
                break
            time.sleep(0.5)
        self.assertTrue(reply.startswith(("GRANT", "LOCKED")), reply)
        self.assertTrue(self.audit(0, "database"), "the outage is audited")
        self.assertIn("unavailable", self.gateways[0].log())

    def test_a_frozen_database_gets_an_answer_and_a_stop(self):
        """
        The database stops answering while its connections stay up (every
        server process stopped with SIGSTOP, as a paused machine): a
        handshake still gets ERROR server-error, after the call deadline,
        not silence; and SIGTERM still stops the gateway, closing the door
        it opened, instead of hanging on the database.
        """
        from knocker.daemon.fleet import CALL_DEADLINE

        knock_file = self.generate()
        kf = parse_knockfile(open(knock_file).read(), knock_file)
        daemon = self.start(0)
        result = self.knock(knock_file, self.endpoint(0))
        self.assertIn("OPEN", result.stdout, result.stderr)
        frozen = self.freeze_cluster()
        started = time.monotonic()
        reply, sock = handshake(HOSTS[0], self.ports[0], "alice", kf.secret,
                                timeout=CALL_DEADLINE + 20)
        sock.close()
        self.assertEqual(reply, "ERROR server-error")
        self.assertLess(time.monotonic() - started, CALL_DEADLINE + 10)
        self.assertIn("no answer within", daemon.log())
        started = time.monotonic()
        daemon.process.terminate()
        daemon.process.wait(timeout=4 * CALL_DEADLINE + 30)
        self.assertLess(time.monotonic() - started, 4 * CALL_DEADLINE + 30)
        closes = read_lines(self.closed[0])
        self.assertEqual([close["argv"][1:] for close in closes], [["127.0.0.1", "alice", "1"]])
        self.assertTrue(frozen)

    def freeze_cluster(self) -> list[int]:
        """
        SIGSTOP the cluster's postmaster and its children (SIGCONT at cleanup).
        """
        import signal

        with open(os.path.join(self.cluster.data, "postmaster.pid")) as handle:
            postmaster = int(handle.readline())
        pids = [postmaster]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as handle:
                        ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if ppid == postmaster:
                    pids.append(int(entry))
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)

        def thaw():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        self.addCleanup(thaw)
        return pids

    def test_closes_belong_to_the_gateway_that_opened(self):
        """
        A door opened through gateway 1 is closed by gateway 1 alone: not by
        gateway 2 while 1 is down, but by 1 when it comes back, once.
        """
        knock_file = self.generate()
        self.start(0)
        result = self.knock(knock_file, self.endpoint(0))
        self.assertIn("OPEN", result.stdout, result.stderr)
        self.gateways[0].kill9()
        self.start(1)
        self.gateways[1].stop()
        self.assertEqual(read_lines(self.closed[1]), [], "gateway 2 ran 1's close")
        self.start(0)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not read_lines(self.closed[0]):
            time.sleep(0.1)
        self.gateways[0].stop()
        closes = read_lines(self.closed[0])
        self.assertEqual(len(closes), 1, closes)
        self.assertEqual(closes[0]["argv"][1:], ["127.0.0.1", "alice", "1"])
        self.assertEqual(self.cluster.psql(self.db, "SELECT count(*) FROM closes").strip(), "0")

    def test_start_refused_without_key_or_database(self):
        """
        A gateway without its key file, or whose database cannot be
        reached, does not start, and says which.
        """
        self.generate()
        os.rename(self.key_file, self.key_file + ".away")
        home = os.path.dirname(self.confs[0])
        daemon = Daemon(self.confs[0], os.path.join(home, "audit.log"), home)
        self.assertEqual(daemon.wait_exit(), 1)
        self.assertIn("database-key-file", daemon.log())
        self.assertFalse(os.path.exists(self.key_file), "the daemon makes no key")
        daemon.stop()
        os.rename(self.key_file + ".away", self.key_file)
        self.cluster.stop()
        daemon = Daemon(self.confs[0], os.path.join(home, "audit.log"), home)
        self.assertEqual(daemon.wait_exit(), 1)
        self.assertIn("cannot connect", daemon.log())
        daemon.stop()

    def test_dump_holds_no_secret(self):
        knock_file = self.generate()
        kf = parse_knockfile(open(knock_file).read(), knock_file)
        dump = self.cluster.dump(self.db)
        self.assertIn("CREATE TABLE public.books", dump)
        self.assertNotIn(kf.secret.hex(), dump)
        self.assertNotIn(kf.secret.hex().upper(), dump)
        import base64

        self.assertNotIn(base64.b64encode(kf.secret).decode()[:20], dump)


class FleetEnrolTests(FleetCase):
    """
    Section 10 on a fleet: an invitation kept in the database, enrolled at
    one gateway; renewals drawn by either gateway, the renewed file
    knocking OPEN at the other; nothing of it in a file or in the dump.
    """

    extra_config = {"renew_at": 2}

    def renew(self, knock_file, n, knocks) -> list[str]:
        """C{knocks} knocks at gateway C{n}, all OPEN; their outputs."""
        outputs = []
        for _ in range(knocks):
            done = self.knock(knock_file, self.endpoint(n))
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr
                             + self.gateways[n].log()[-2000:])
            outputs.append(done.stdout)
        return outputs

    def test_invite_enroll_and_renew_across_the_fleet(self):
        invited = knocker("invite", "bob", "--config", self.confs[0], "--knocks", "6",
                          "--ports", "3")
        self.assertEqual(invited.returncode, 0, invited.stderr)
        code = invited.stdout.strip()
        self.start(0)
        self.start(1)
        listed = knocker("status", "--config", self.confs[1], "--json")
        self.assertIn('"state": "open"', listed.stdout, listed.stderr)
        out = os.path.join(self.dir, "client", "bob.knock")
        os.makedirs(os.path.dirname(out))
        enrolled = knocker("enroll", code, "--server", self.endpoint(0), "-o", out)
        self.assertEqual(enrolled.returncode, 0, enrolled.stdout + enrolled.stderr
                         + self.gateways[0].log()[-2000:])
        self.assertEqual(stat.S_IMODE(os.stat(out).st_mode), 0o600)
        again = knocker("enroll", code, "--server", self.endpoint(1), "-o", out + ".2")
        self.assertEqual(again.returncode, 21, "used, seen by the other gateway too")
        first = parse_knockfile(read_private(out), out)

        # Knocks 1-4 at gateway 0: 2 left after the 4th, which renews.
        outputs = self.renew(out, 0, 4)
        self.assertEqual(["renewed" in o for o in outputs], [False, False, False, True])
        second = parse_knockfile(read_private(out), out)
        self.assertNotEqual(second.secret, first.secret)
        # The renewed file at the other gateway: OPEN from knock 1; and that
        # gateway draws the next renewal itself.
        outputs = self.renew(out, 1, 4)
        self.assertEqual(["renewed" in o for o in outputs], [False, False, False, True])
        third = parse_knockfile(read_private(out), out)
        self.assertNotEqual(third.secret, second.secret)
        # The third file, drawn by gateway 1, back at gateway 0.
        self.assertNotIn("renewed", self.renew(out, 0, 1)[0])
        grants = [(n, e["index"]) for n in (0, 1) for e in self.audit(n, "grant")]
        self.assertEqual(sorted(grants), sorted([(0, i) for i in (1, 2, 3, 4, 1)]
                                                + [(1, i) for i in (1, 2, 3, 4)]))
        self.assertEqual([e["by"] for n in (0, 1) for e in self.audit(n, "renew-confirm")],
                         ["confirm", "confirm"])
        old = self.knock(out + ".prev", self.endpoint(0))
        self.assertEqual(old.returncode, 4, old.stdout + old.stderr)

        for n in (0, 1):
            clients = os.path.join(os.path.dirname(self.confs[n]), "state", "clients")
            self.assertFalse(os.path.exists(os.path.join(clients, "bob.pending")),
                             "a fleet keeps the pending copy in the database")
        dump = self.cluster.dump(self.db)
        self.assertIn("CREATE TABLE public.invitations", dump)
        self.assertNotIn(code.split("-", 1)[1], dump, "the code is sealed")
        for kf in (first, second, third):
            self.assertNotIn(kf.secret.hex(), dump)

    def test_renewal_proven_at_the_other_gateway(self):
        """
        The CONFIRM of a renewal at gateway 0 is lost: the new file is
        pending in the database, and its first handshake at gateway 1
        proves it there (the pending copy read from the database).
        """
        knock_file = self.generate("alice", knocks=6, ports=3)
        self.start(0)
        self.start(1)
        self.renew(knock_file, 0, 3)
        old = parse_knockfile(read_private(knock_file), knock_file)
        note = take_offer_losing_confirm(HOSTS[0], self.ports[0], old, knock_file)
        self.assertIn("to be confirmed by the next knock", note)
        new = parse_knockfile(read_private(knock_file), knock_file)
        self.assertNotEqual(new.secret, old.secret)
        self.assertEqual(self.audit(0, "renew-confirm"), [], "pending")
        done = self.knock(knock_file, self.endpoint(1))
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr
                         + self.gateways[1].log()[-2000:])
        self.assertEqual([e["by"] for e in self.audit(1, "renew-confirm")], ["proof"])
        self.assertEqual([e["index"] for e in self.audit(1, "grant")], [1])
        for n in (0, 1):
            refused = self.knock(knock_file + ".prev", self.endpoint(n))
            self.assertEqual(refused.returncode, 4, refused.stdout + refused.stderr)


class _LosingConfirm:
    """take_offer's connection over a socket; its CONFIRM is lost (cut)."""

    def __init__(self, sock):
        self.sock = sock
        self.reader = sock.makefile("rb")

    def send(self, line: bytes) -> None:
        if line.startswith(b"CONFIRM "):
            self.sock.shutdown(socket.SHUT_RDWR)
            return
        self.sock.sendall(line)

    async def readline(self, timeout):
        line = self.reader.readline()
        return line.rstrip(b"\n") if line else None


def take_offer_losing_confirm(host: str, port: int, kf, knock_file: str) -> str:
    """
    One knock by hand from 127.0.0.1 with C{kf}, whose OPEN must come with
    an offer: taken as C{knocker knock} takes it, but the CONFIRM is cut.
    """
    from types import SimpleNamespace

    from knocker.client.knock import run_blocking
    from knocker.enrol.renewal import take_offer

    sock = socket.create_connection((host, port), timeout=10, source_address=("127.0.0.1", 0))
    try:
        conn = _LosingConfirm(sock)
        sock.sendall(hs.format_hello(kf.client))
        nonce = conn.reader.readline().decode().split()[-1]
        sock.sendall(hs.format_proof(hs.hello_mac(kf.secret, kf.client, nonce)))
        grant = hs.parse_reply(conn.reader.readline().rstrip(b"\n"))
        for knock_port in kf.knock(grant.index):
            socket.create_connection((host, knock_port), timeout=5,
                                     source_address=("127.0.0.1", 0)).close()
        assert conn.reader.readline() == b"OPEN\n"
        offer = conn.reader.readline().rstrip(b"\n")
        assert offer.startswith(b"OFFER "), offer
        config = SimpleNamespace(knock_file=knock_file)
        return run_blocking(take_offer(conn, offer, config, kf, nonce, 10))
    finally:
        sock.close()


def kf_pool(case) -> list[int]:
    return [int(p) for p in case.cluster.psql(case.db, "SELECT value FROM meta WHERE key = "
                                              "'pool'").strip().split(",")]


class FleetConsoleTests(FleetCase):
    """
    The console's changes on a fleet: made through one gateway's admin API
    (knocker revoke, knocker unlock), they hold on the other within a
    couple of seconds; a client invited there enrols at the other.
    """

    def setUp(self):
        super().setUp()
        for conf in self.confs:
            with open(conf) as handle:
                text = handle.read()
            # Each gateway its console on a free loopback port; lockouts
            # long enough that only a lift ends them.
            text = text.replace("admin = \n", "admin = tcp:0:interface=127.0.0.1\n")
            text = text.replace("lockout = 3\n", "lockout = 600\n")
            with open(conf, "w") as handle:
                handle.write(text)

    def reply_within(self, n, secret, wanted, limit, source="127.0.0.1") -> tuple[str, float]:
        """
        Handshakes on gateway C{n} until one's reply starts with C{wanted}
        (or C{limit} seconds pass): the last reply and the seconds taken.
        """
        started = time.monotonic()
        while True:
            reply, sock = handshake(HOSTS[n], self.ports[n], "alice", secret, source=source)
            sock.close()
            taken = time.monotonic() - started
            if reply.startswith(wanted) or taken > limit:
                return reply, taken
            time.sleep(0.05)

    def test_revoke_through_one_gateway_denies_on_the_other(self):
        kf = self.two_gateways()
        reply, sock = handshake(HOSTS[1], self.ports[1], "alice", kf.secret)
        sock.close()
        self.assertTrue(reply.startswith("GRANT"), reply)
        done = knocker("revoke", "alice", "--config", self.confs[0])
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("alice is revoked", done.stdout)
        reply, taken = self.reply_within(1, kf.secret, "DENIED", 5)
        self.assertEqual(reply, "DENIED", self.gateways[1].log()[-2000:])
        self.assertLess(taken, 2.0, "the revocation's notice reaches the other gateway")
        self.assertEqual(self.audit(1, "denied")[-1]["reason"], "revoked")
        self.assertEqual(self.audit(0, "admin-revoke")[0]["client"], "alice")
        # knocker report on a gateway: the clients' counters from the database.
        done = knocker("report", "--format", "json", "--config", self.confs[1])
        self.assertEqual(done.returncode, 0, done.stderr)
        left = json.loads(done.stdout)["knocks_left"]
        self.assertEqual([(c["client"], c["knocks"]) for c in left], [("alice", 200)])
        # A new file for alice is not revoked, on either gateway (once the
        # lockout the denials started is lifted).
        done = knocker("unlock", "--all", "--config", self.confs[0])
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        done = knocker("generate", "alice", "--config", self.confs[0], "--knocks", "20",
                       "--ports", "4", "-o", os.path.join(self.dir, "alice.knock"), "--force")
        self.assertEqual(done.returncode, 0, done.stderr)
        kf = parse_knockfile(open(os.path.join(self.dir, "alice.knock")).read(), "alice.knock")
        for n in (0, 1):
            reply, taken = self.reply_within(n, kf.secret, "GRANT", 5)
            self.assertTrue(reply.startswith("GRANT"), (n, reply))

    def test_invite_through_one_gateway_enrols_on_the_other(self):
        from knocker.console.access import Credentials
        from tests.processes.test_console import get

        self.two_gateways()
        home = os.path.dirname(self.confs[0])
        daemon = Credentials(os.path.join(home, "state")).daemon()
        status, body = get(daemon["url"] + "invite", daemon["token"],
                           {"client": "carol", "knocks": "5", "expires": "10m"})
        self.assertEqual(status, 200, body + self.gateways[0].log()[-2000:].encode())
        answer = json.loads(body)
        self.assertEqual(answer["command"], f"knocker enroll {answer['code']} --server "
                                            f"tcp:{HOSTS[0]}:{self.ports[0]}")
        out = os.path.join(self.dir, "client", "carol.knock")
        os.makedirs(os.path.dirname(out))
        enrolled = knocker("enroll", answer["code"], "--server", self.endpoint(1), "-o", out)
        self.assertEqual(enrolled.returncode, 0, enrolled.stdout + enrolled.stderr
                         + self.gateways[1].log()[-2000:])
        for n in (0, 1):  # served at once by the gateway that made it, and by the other
            done = self.knock(out, self.endpoint(n))
            self.assertEqual(done.returncode, 0, done.stdout + done.stderr
                             + self.gateways[n].log()[-2000:])
        self.assertEqual(self.audit(0, "admin-invite")[0]["client"], "carol")
        self.assertNotIn(answer["code"].split("-", 1)[1],
                         open(os.path.join(home, "audit.log")).read())
        status, body = get(daemon["url"] + "invite", daemon["token"], {"client": "carol"})
        self.assertEqual(status, 409, body)

    def test_unlock_all_through_one_gateway_lifts_on_the_other(self):
        kf = self.two_gateways()
        self.fail_a_knock(0, kf)  # on gateway 1
        for n in (0, 1):
            reply, _ = self.reply_within(n, kf.secret, "LOCKED", 5)
            self.assertTrue(reply.startswith("LOCKED"), (n, reply))
        done = knocker("unlock", "--all", "--config", self.confs[1])
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        self.assertIn("lifted: *", done.stdout)
        # Gateway 1, where the lockout started, lets alice knock again.
        reply, taken = self.reply_within(0, kf.secret, "GRANT", 5)
        self.assertTrue(reply.startswith("GRANT"), reply + self.gateways[0].log()[-2000:])
        self.assertLess(taken, 2.0)
        self.assertEqual(self.cluster.psql(self.db, "SELECT count(*) FROM lockouts").strip(), "0")
        self.assertEqual(self.audit(1, "admin-lift")[0]["lifted"], ["*"])
