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

from knocker.client import command
from knocker.client.blocking_driver import BlockingDriver
from knocker.client.command import run_knock
from knocker.client.knock import Outcome, knock, run_blocking
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
CHALLENGE = f"CHALLENGE {NONCE}\n".encode()
RESET = None  # in a server's first words: the connection reset there
PROOF = f"PROOF {hs.hello_mac(SECRET, 'alice', NONCE)}\n".encode()


class DenyingServer:
    """
    A central port that answers every exchange with a CHALLENGE, then DENIED
    once a valid PROOF has come (ERROR for anything else); it keeps the
    lines each connection sent.  C{first}, if given, is what it says after
    HELLO instead: a list of byte strings sent one by one with
    C{pause} seconds before each, ending the exchange unless one of them
    holds the CHALLENGE.
    """

    def __init__(self, first=None, pause=0.0):
        self.first, self.pause = first, pause
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
        for piece in self.first or [CHALLENGE]:
            time.sleep(self.pause)
            if piece is RESET:
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            conn.sendall(piece)
        if CHALLENGE not in b"".join(self.first or [CHALLENGE]):
            heard.extend(iter(lines.readline, b""))
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


class EarlyHelloTests(SynchronousTestCase):
    def setUp(self):
        self.server = DenyingServer()
        self.addCleanup(self.server.close)
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir, mode=0o700)
        self.knock_file = os.path.join(self.dir, "alice.knock")
        write_private(self.knock_file, format_knockfile(KF))

    def knockfile(self):
        with open(self.knock_file) as handle:
            return KnockFileText(handle.read(), self.knock_file)

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

    def test_hello_goes_out_before_the_protocol_is_loaded(self):
        done = knock_watching(self.server.port, self.dir, "__init__", "said", "HELLO", (
            "knocker.core.handshake", "knocker.client.knock", "knocker.client.blocking_driver",
            "_sha256", "_sha2"))
        self.assertIn("LOADED AT HELLO [] True", done.stdout, done.stderr[-500:])
        self.assertIn("denied", done.stderr.lower())
        self.assertEqual(len(self.server.exchanges), 1)


def knock_watching(port: int, directory: str, method: str, flag: str, name: str, modules):
    """
    C{knocker knock --config} in a fresh interpreter, printing which of
    C{modules} were loaded when C{EarlyHello.method} had run, and its
    C{flag} (whether it said its line).
    """
    config_path = os.path.join(directory, "client.conf")
    with open(config_path, "w") as handle:
        handle.write(f"[client]\nserver = tcp:host=127.0.0.1:port={port}\n"
                     f"knock-file = {os.path.join(directory, 'alice.knock')}\n"
                     f"log-file = {os.path.join(directory, 'client.log')}\n")
    code = (
        "import sys\n"
        "from knocker.client import tcp\n"
        f"real = tcp.EarlyHello.{method}\n"
        "def watched(self, *args, **kwargs):\n"
        f"    loaded = [m for m in {tuple(modules)!r} if m in sys.modules]\n"
        "    real(self, *args, **kwargs)\n"
        f"    loaded += [m for m in {tuple(modules)!r} if m in sys.modules and m not in loaded]\n"
        f"    print('LOADED AT {name}', loaded, self.{flag} not in (None, False), flush=True)\n"
        f"tcp.EarlyHello.{method} = watched\n"
        "from knocker.main import main\n"
        f"sys.exit(main(['knock', '--config', {config_path!r}]))\n"
    )
    return subprocess.run([sys.executable, "-c", code], env=environment(),
                          capture_output=True, text=True, timeout=60)


class EarlyProofTests(SynchronousTestCase):
    """
    The CHALLENGE answered early: the PROOF goes out before the driver and
    the knock's coroutine are loaded; whatever else comes first is read by
    the knock as it would have been.
    """

    def setUp(self):
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir, mode=0o700)
        self.knock_file = os.path.join(self.dir, "alice.knock")
        write_private(self.knock_file, format_knockfile(KF))

    def knock(self, first=None, pause=0.0):
        """
        A knock against a L{DenyingServer} saying C{first}; C{self.early},
        whether the CHALLENGE was answered before the knock took over.
        """
        self.server = DenyingServer(first, pause)
        self.addCleanup(self.server.close)
        answer, self.early = EarlyHello.answer, []

        def watched(early, *args):
            answer(early, *args)
            self.early.append(early.answered is not None)

        self.patch(EarlyHello, "answer", watched)
        with open(self.knock_file) as handle:
            knockfile = KnockFileText(handle.read(), self.knock_file)
        return run_knock(client_config(f"tcp:127.0.0.1:{self.server.port}", self.dir), knockfile)

    def damage_the_knocks(self):
        """The file's header stays good, a knock line is broken (found by the whole-file check)."""
        lines = format_knockfile(KF).splitlines(keepends=True)
        lines[-1] = "2 1,2,x\n"
        os.unlink(self.knock_file)
        write_private(self.knock_file, "".join(lines))

    def test_the_proof_goes_out_before_the_knock_is_loaded(self):
        server = DenyingServer()
        self.addCleanup(server.close)
        done = knock_watching(server.port, self.dir, "answer", "answered", "PROOF",
                              ("knocker.client.knock", "knocker.client.blocking_driver"))
        self.assertIn("LOADED AT PROOF [] True", done.stdout, done.stderr[-500:])
        self.assertIn("denied", done.stderr.lower())
        self.assertEqual(server.exchanges, [[b"KNOCKER/1 HELLO alice\n", PROOF]])

    def test_a_challenge_in_pieces_is_answered_early_once(self):
        result = self.knock([CHALLENGE[:30], CHALLENGE[30:]], pause=0.05)
        self.assertEqual(result.outcome, Outcome.DENIED)
        self.assertEqual(self.early, [True])
        self.assertEqual(self.server.exchanges, [[b"KNOCKER/1 HELLO alice\n", PROOF]])

    def test_a_challenge_slower_than_the_early_wait_is_answered_by_the_knock(self):
        self.patch(command, "EARLY_ANSWER_WAIT", 0.05)
        result = self.knock(pause=0.3)
        self.assertEqual(result.outcome, Outcome.DENIED)
        self.assertEqual(self.early, [False])
        self.assertEqual(self.server.exchanges, [[b"KNOCKER/1 HELLO alice\n", PROOF]])

    def test_a_silent_server_is_said_to_be_silent_for_the_whole_wait(self):
        self.server = DenyingServer([b""])  # HELLO heard, nothing said
        self.addCleanup(self.server.close)
        config = client_config(f"tcp:127.0.0.1:{self.server.port}", self.dir).replace(
            timeout=1.0)
        with open(self.knock_file) as handle:
            result = run_knock(config, KnockFileText(handle.read(), self.knock_file))
        self.assertEqual(result.outcome, Outcome.NO_VERDICT)
        # (the early wait took half the second; the message counts it)
        self.assertRegex(result.detail, r"no reply within (0\.9|1\.0)s")

    def test_a_knock_file_broken_past_its_header_is_found_after_an_early_proof(self):
        self.damage_the_knocks()
        result = self.knock()
        self.assertEqual(self.early, [True])
        self.assertEqual(result.outcome, Outcome.BAD_FILE)

    def test_a_proof_that_cannot_be_said_is_no_verdict_before_any_file_check(self):
        """
        The server resets as its CHALLENGE goes out: saying the PROOF fails,
        and the knock reports that failure, as its own send would have, not
        what the whole-file check would have found next.
        """
        self.damage_the_knocks()
        with socket.create_server(("127.0.0.1", 0)) as listener:
            endpoint = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
            early = EarlyHello(endpoint, b"KNOCKER/1 HELLO alice\n", 2)
            self.addCleanup(early.close)
            conn, _ = listener.accept()
            with conn:
                conn.recv(100)
                conn.sendall(CHALLENGE)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            with open(self.knock_file) as handle:
                knockfile = KnockFileText(handle.read(), self.knock_file)
            early.answer(hs.ClientHandshake(knockfile), hs.MAX_LINE, 1.0, 5.0)
            self.assertIsNone(early.answered)
            self.assertIsInstance(early.read_failure, OSError)
            config = client_config(endpoint, self.dir)
            result = run_blocking(knock(BlockingDriver(False, early), config, knockfile,
                                        began=early.began))
        self.assertEqual(result.outcome, Outcome.NO_VERDICT)
        self.assertIn("central connection", result.detail)

    def test_a_refusal_first_is_the_knocks_to_read(self):
        result = self.knock([b"LOCKED 30\n"])
        self.assertEqual(result.outcome, Outcome.LOCKED)
        self.assertEqual(self.server.exchanges, [[b"KNOCKER/1 HELLO alice\n"]])

    def test_what_came_after_the_challenge_is_the_knocks_next_line(self):
        result = self.knock([CHALLENGE + b"OPEN\n"])
        self.assertEqual(result.outcome, Outcome.BAD_SERVER)
        self.assertIn("OPEN out of turn", result.detail)

    def test_an_over_long_first_line_is_a_broken_server(self):
        result = self.knock([b"X" * (hs.MAX_LINE + 100)])
        self.assertEqual(result.outcome, Outcome.BAD_SERVER)
        self.assertIn("over-long line", result.detail)

    def test_a_reset_instead_of_the_challenge_is_named(self):
        result = self.knock([RESET])
        self.assertEqual(result.outcome, Outcome.NO_VERDICT)
        self.assertIn("central connection", result.detail)
        self.assertIn("reset", result.detail.lower())


class TakeTests(SynchronousTestCase):
    def test_taken_once_and_only_for_its_server(self):
        with socket.create_server(("127.0.0.1", 0)) as listener:
            endpoint = f"tcp:127.0.0.1:{listener.getsockname()[1]}"
            early = EarlyHello(endpoint, b"KNOCKER/1 HELLO alice\n", 2)
            self.addCleanup(early.close)
            self.assertIsNone(early.take("tcp:127.0.0.1:1"))
            sock, peer_host, handed = early.take(endpoint)
            self.addCleanup(sock.close)
            # said HELLO; nothing answered, read or failed yet
            self.assertEqual((peer_host, handed), ("127.0.0.1", {
                "greeted": b"KNOCKER/1 HELLO alice\n", "answered": None, "unread": b"",
                "failure": None, "waited": 0.0}))
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
