"""
HELLO said early: C{knocker knock} on plain TCP connects to its first
server and says HELLO before it loads the protocol's code, then knocks on
that connection as on any other.  Checked over real loopback sockets
against a small scripted server: the server hears HELLO once, the knock goes
on to PROOF, a dead first server is passed over, and the command has not
loaded the protocol when HELLO goes out.
"""

import os
import socket
import struct
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from knocker.client.command import run_knock
from knocker.client.knock import Outcome
from knocker.client.tcp import EarlyHello
from knocker.core import handshake as hs
from knocker.core.config import parse_client_config
from knocker.core.knockfile import KnockFile, KnockFileText
from knocker.core.knockgen import format_knockfile
from knocker.files import write_private
from tests.helpers.processes import environment, free_port

SECRET = bytes(range(32))
KF = KnockFile("alice", SECRET, 3, "2026-11-25T10:00:00Z", ((1, 2, 3), (4, 5, 6)))
NONCE = "cd" * 32


def challenge(conn, lines) -> bool:
    conn.sendall(f"CHALLENGE {NONCE}\n".encode())
    return True


class DenyingServer:
    """
    A central port that answers every exchange with a CHALLENGE, then DENIED
    once a valid PROOF has come (ERROR for anything else); it keeps the
    lines each connection sent.  C{greet(conn, lines)} says what follows HELLO (a
    CHALLENGE, by default) and answers whether a PROOF is awaited; if not,
    the server only listens until the client hangs up.
    """

    def __init__(self, greet=challenge):
        self.greet = greet
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(10)
        self.port = self.listener.getsockname()[1]
        self.exchanges = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        try:
            while True:
                conn, _ = self.listener.accept()
                with conn:
                    conn.settimeout(10)
                    self._exchange(conn.makefile("rb"), conn)
        except OSError:
            pass  # closed by the test

    def _exchange(self, lines, conn):
        heard = []
        self.exchanges.append(heard)
        hello = lines.readline()
        heard.append(hello)
        if not self.greet(conn, lines):
            try:
                heard.extend(iter(lines.readline, b""))
            except (OSError, ValueError):
                pass  # the greeting closed the connection
            return
        proof = lines.readline()
        heard.append(proof)
        good = proof == f"PROOF {hs.hello_mac(SECRET, 'alice', NONCE)}\n".encode()
        conn.sendall(b"DENIED\n" if good else b"ERROR bad-proof\n")
        heard.extend(iter(lines.readline, b""))  # whatever else comes before the close

    def close(self):
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accept (Linux)
        except OSError:
            pass
        self.listener.close()
        self._thread.join(10)


def client_config(server: str, directory: str):
    return parse_client_config(overrides={
        "server": server, "knock-file": os.path.join(directory, "alice.knock"),
        "log-file": os.path.join(directory, "client.log"), "timeout": "5",
        "connect-timeout": "2"})


class KnockFileCase(SynchronousTestCase):
    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir, mode=0o700)
        self.knock_file = os.path.join(self.dir, "alice.knock")
        write_private(self.knock_file, format_knockfile(KF))

    def knockfile(self):
        with open(self.knock_file) as handle:
            return KnockFileText(handle.read(), self.knock_file)


class EarlyHelloTests(KnockFileCase):
    def setUp(self):
        super().setUp()
        self.server = DenyingServer()
        self.addCleanup(self.server.close)

    def test_the_server_hears_hello_once_then_the_proof(self):
        config = client_config(f"tcp:127.0.0.1:{self.server.port}", self.dir)
        result = run_knock(config, self.knockfile())
        self.assertEqual(result.outcome, Outcome.DENIED)
        self.assertEqual(self.server.exchanges, [[
            b"KNOCKER/1 HELLO alice\n",
            f"PROOF {hs.hello_mac(SECRET, 'alice', NONCE)}\n".encode(),
        ]])

    def test_a_dead_first_server_is_passed_over(self):
        dead = free_port()
        config = client_config(f"tcp:127.0.0.1:{dead} tcp:127.0.0.1:{self.server.port}",
                               self.dir)
        result = run_knock(config, self.knockfile())
        self.assertEqual(result.outcome, Outcome.DENIED)
        self.assertEqual([heard[0] for heard in self.server.exchanges],
                         [b"KNOCKER/1 HELLO alice\n"])

    def test_all_dead_is_unreachable_naming_the_servers(self):
        dead = free_port()
        config = client_config(f"tcp:127.0.0.1:{dead}", self.dir)
        result = run_knock(config, self.knockfile())
        self.assertEqual(result.outcome, Outcome.UNREACHABLE)
        self.assertIn(f"tcp:127.0.0.1:{dead}", result.message())
        self.assertIn("refused", result.message().lower())

    def knock_watched(self, method: str, watcher: str) -> subprocess.CompletedProcess:
        """
        C{knocker knock --config} in a child whose C{EarlyHello.METHOD} is
        wrapped: C{watcher}'s lines run in the wrapper, around C{call()}.
        """
        config_path = os.path.join(self.dir, "client.conf")
        with open(config_path, "w") as handle:
            handle.write(f"[client]\nserver = tcp:host=127.0.0.1:port={self.server.port}\n"
                         f"knock-file = {self.knock_file}\n"
                         f"log-file = {os.path.join(self.dir, 'client.log')}\n")
        code = (
            "import sys\n"
            "from knocker.client import tcp\n"
            f"real = tcp.EarlyHello.{method}\n"
            "def watched(self, *args, **kwargs):\n"
            "    call = lambda: real(self, *args, **kwargs)\n"
            + "".join(f"    {line}\n" for line in watcher.splitlines()) +
            f"tcp.EarlyHello.{method} = watched\n"
            "from knocker.main import main\n"
            f"sys.exit(main(['knock', '--config', {config_path!r}]))\n"
        )
        return subprocess.run([sys.executable, "-c", code], env=environment(),
                              capture_output=True, text=True, timeout=60)

    def test_hello_goes_out_before_the_protocol_is_loaded(self):
        done = self.knock_watched("__init__", (
            "loaded = [m for m in ('knocker.core.handshake', 'knocker.client.knock',\n"
            "          'knocker.client.blocking_driver', '_sha256', '_sha2') if m in sys.modules]\n"
            "call()\n"
            "print('LOADED AT HELLO', loaded, self.said, flush=True)"))
        self.assertIn("LOADED AT HELLO [] True", done.stdout, done.stderr[-500:])
        self.assertIn("denied", done.stderr.lower())
        self.assertEqual(len(self.server.exchanges), 1)

    def test_proof_goes_out_before_the_knock_is_loaded(self):
        done = self.knock_watched("answer", (
            "call()\n"
            "loaded = [m for m in ('knocker.client.knock', 'knocker.client.blocking_driver')\n"
            "          if m in sys.modules]\n"
            "print('LOADED AT PROOF', loaded, self.handshake is not None, flush=True)"))
        self.assertIn("LOADED AT PROOF [] True", done.stdout, done.stderr[-500:])
        self.assertIn("denied", done.stderr.lower())
        self.assertEqual(self.server.exchanges, [[
            b"KNOCKER/1 HELLO alice\n",
            f"PROOF {hs.hello_mac(SECRET, 'alice', NONCE)}\n".encode(),
        ]])


class EarlyProofTests(KnockFileCase):
    """
    PROOF said early answers only a whole CHALLENGE that has come in time;
    whatever else the server says or does after HELLO reaches the knock
    as if nothing had been said early.
    """

    def knock(self, greet):
        server = DenyingServer(greet)
        self.addCleanup(server.close)
        config = client_config(f"tcp:127.0.0.1:{server.port}", self.dir)
        return server, run_knock(config, self.knockfile())

    def assertProvedOnce(self, server, result):
        self.assertEqual(result.outcome, Outcome.DENIED, result.message())
        self.assertEqual(server.exchanges, [[
            b"KNOCKER/1 HELLO alice\n",
            f"PROOF {hs.hello_mac(SECRET, 'alice', NONCE)}\n".encode(),
        ]])

    def test_a_challenge_in_two_pieces_is_answered_once(self):
        def halves(conn, lines):
            conn.sendall(f"CHALLENGE {NONCE[:20]}".encode())
            time.sleep(0.2)
            conn.sendall(f"{NONCE[20:]}\n".encode())
            return True

        self.assertProvedOnce(*self.knock(halves))

    def test_a_challenge_later_than_the_early_wait_is_answered_by_the_knock(self):
        self.patch(EarlyHello, "ANSWER_WAIT", 0.05)

        def late(conn, lines):
            time.sleep(0.3)
            return challenge(conn, lines)

        self.assertProvedOnce(*self.knock(late))

    def test_a_reply_other_than_a_challenge_is_the_knocks_to_judge(self):
        def locked(conn, lines):
            conn.sendall(b"LOCKED 30\n")

        server, result = self.knock(locked)
        self.assertEqual((result.outcome, result.retry_after), (Outcome.LOCKED, 30))
        self.assertEqual(server.exchanges, [[b"KNOCKER/1 HELLO alice\n"]])

    def test_a_malformed_challenge_is_a_bad_server(self):
        def malformed(conn, lines):
            conn.sendall(b"CHALLENGE not-a-nonce\n")

        server, result = self.knock(malformed)
        self.assertEqual(result.outcome, Outcome.BAD_SERVER)
        self.assertIn("CHALLENGE not-a-nonce", result.message())
        self.assertEqual(server.exchanges, [[b"KNOCKER/1 HELLO alice\n"]])

    def test_a_reset_met_while_waiting_is_reported_as_a_reset(self):
        def reset(conn, lines):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            lines.close()
            conn.close()  # the last reference: an RST goes out

        _, result = self.knock(reset)
        self.assertEqual(result.outcome, Outcome.NO_VERDICT)
        self.assertIn("reset", result.message().lower())


class TakeTests(SynchronousTestCase):
    def test_taken_once_and_only_for_its_server(self):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            endpoint = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
            early = EarlyHello(endpoint, b"KNOCKER/1 HELLO alice\n", 2)
            self.addCleanup(early.close)
            self.assertIsNone(early.take("tcp:127.0.0.1:1"))
            opened = early.take(endpoint)
            self.addCleanup(opened.sock.close)
            self.assertEqual((opened.peer_host, opened.greeted, opened.handshake),
                             ("127.0.0.1", b"KNOCKER/1 HELLO alice\n", None))
            self.assertIsNone(early.take(endpoint))
            conn, _ = listener.accept()
            with conn:
                self.assertEqual(conn.recv(100), b"KNOCKER/1 HELLO alice\n")

    def test_a_failure_is_raised_when_taken(self):
        endpoint = f"tcp:127.0.0.1:{free_port()}"
        early = EarlyHello(endpoint, b"KNOCKER/1 HELLO alice\n", 2)
        self.assertRaises(ConnectionRefusedError, early.take, endpoint)
        self.assertIsNone(early.take(endpoint))

    def test_an_untaken_connection_is_hung_up(self):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            early = EarlyHello(f"tcp:127.0.0.1:{listener.getsockname()[1]}",
                               b"KNOCKER/1 HELLO alice\n", 2)
            early.close()
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(5)
                self.assertEqual(conn.recv(100), b"KNOCKER/1 HELLO alice\n")
                self.assertEqual(conn.recv(100), b"")  # the client hung up
