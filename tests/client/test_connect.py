"""
C{knocker connect}: its arguments, the connection after OPEN with its
retries, the relay, and the real command against a real daemon on loopback
(an echo server standing in for sshd): bytes both ways, half-close, the
exit statuses of a failed knock (those of C{knocker knock}, nothing on
standard output), and the imports it stays clear of.
"""

import errno
import os
import select
import socket
import subprocess
import sys
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from knocker.client import connect
from knocker.core.knockfile import KnockFile, parse_knockfile
from knocker.core.knockgen import format_knockfile
from knocker.files import SETTLED_SECONDS, read_private, write_private
from tests.helpers.processes import DaemonCase, environment, free_port, knocker


class SplitTargetTests(SynchronousTestCase):
    def test_host_and_port_are_the_last_two(self):
        self.assertEqual(
            connect.split_target(["--config", "door.conf", "-v", "door.example.org", "22"]),
            (["--config", "door.conf", "-v"], "door.example.org", 22),
        )
        self.assertEqual(connect.split_target(["::1", "65535"]), ([], "::1", 65535))
        self.assertEqual(connect.split_target(["--timeout=5", "h", "1"]), (["--timeout=5"], "h", 1))

    def test_bad_port_refused(self):
        for port in ("0", "65536", "ssh", "22x", "", "-1", "+22", " 22", "2\u00b2", "1e3"):
            with self.assertRaises(ValueError) as caught:
                connect.split_target(["--config", "c", "host", port])
            self.assertIn(f"bad PORT {port!r}", str(caught.exception))
            self.assertIn("1 to 65535", str(caught.exception))
            self.assertIn(connect.USAGE, str(caught.exception))

    def test_missing_or_misplaced_target_refused(self):
        for argv in ([], ["22"], ["--config", "c"]):
            with self.assertRaises(ValueError) as caught:
                connect.split_target(argv)
            self.assertIn("HOST and PORT", str(caught.exception))
        with self.assertRaises(ValueError) as caught:
            connect.split_target(["--config", "c", "-v", "22"])
        self.assertIn("bad HOST '-v'", str(caught.exception))


class CommandLineTests(SynchronousTestCase):
    """
    Refusals before anything is knocked: exit 2, a message on standard
    error, nothing on standard output.
    """

    def test_bad_port_exit_2(self):
        done = knocker("connect", "--knock-file", "/nonexistent/alice.knock", "127.0.0.1", "ssh")
        self.assertEqual((done.returncode, done.stdout), (2, ""))
        self.assertIn("knocker connect: bad PORT 'ssh': a TCP port number from 1 to 65535",
                      done.stderr)
        self.assertIn("usage: knocker connect", done.stderr)

    def test_unknown_option_exit_2(self):
        done = knocker("connect", "--no-such-key", "1", "127.0.0.1", "22")
        self.assertEqual((done.returncode, done.stdout), (2, ""))
        self.assertIn("unknown option '--no-such-key'", done.stderr)
        self.assertIn("usage: knocker connect [--config FILE]", done.stderr)

    def test_an_endpoint_no_driver_can_use_is_a_usage_error(self):
        """
        A mistyped server is the configuration's fault: exit 2 naming it,
        not UNREACHABLE (3), which a script would retry.  For knock,
        connect and enroll alike.
        """
        knock_file = os.path.join(os.path.dirname(__file__), "no-such.knock")
        for server, why in [("tcp:host=127.0.0.1:port=notaport", "invalid literal"),
                            ("tcp:host=127.0.0.1:port=70000", "port 70000 is not 1-65535"),
                            # one the blocking driver leaves to Twisted
                            ("tcp:host=127.0.0.1:port=99999:timeout=3",
                             "port 99999 is not 1-65535"),
                            ("tcp:127.0.0.1:99999:timeout=3", "port 99999 is not 1-65535"),
                            ("tcp6:host=::1:port=7000", "Unknown endpoint type: 'tcp6'"),
                            ("unix:path=/run/knocker.sock", "no TCP address for the knock"),
                            ("tcp:host=127.0.0.1:port=4500\u00b2", "invalid literal"),
                            # Twisted's ssl: checks no certificate unless told to
                            ("ssl:host=127.0.0.1:port=7000",
                             "do not check the server's certificate; use tls:"),
                            # Twisted's own parser raises a RuntimeError here
                            ("tls:127.0.0.1:7000\\", "a backslash at the end")]:
            for command in (["knock"], ["connect"]):
                args = [*command, "--server", server, "--knock-file", knock_file]
                if command == ["connect"]:
                    args += ["127.0.0.1", "22"]
                done = knocker(*args)
                self.assertEqual((done.returncode, done.stdout), (2, ""), (args, done.stderr))
                self.assertIn(f"server = {server}: not a usable endpoint", done.stderr)
                self.assertIn(why, done.stderr)
        done = knocker("enroll", "1-paper-piano-teapot", "--server", "10.77.0.1:7000")
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("--server 10.77.0.1:7000: not a usable endpoint (Unknown endpoint type",
                      done.stderr)
        done = knocker("enroll", "1-paper-piano-teapot", "--server", "ssl:127.0.0.1:7000")
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn("do not check the server's certificate", done.stderr)

    def test_an_endpoints_kind_in_capitals_is_twisteds_as_well(self):
        from knocker.client.command import endpoint_problem

        for endpoint in ("TCP:127.0.0.1:45001", "Tcp:host=127.0.0.1:port=45001:timeout=3"):
            self.assertIsNone(endpoint_problem(endpoint), endpoint)
        self.assertIn("certificate", endpoint_problem("SSL:host=127.0.0.1:port=45001"))

    def test_an_unusable_endpoint_among_several_is_passed_over(self):
        """
        A fleet's list with one endpoint no driver can use: that one is
        named and passed over, the others are knocked, and nothing comes
        out as a traceback (a trailing backslash, or a certificate that is
        no certificate, make Twisted raise what its parser does not).
        """
        knock_file = os.path.join(os.path.dirname(__file__), "no-such.knock")
        for bad in ["tls:127.0.0.1:7000\\", "tls:127.0.0.1:7000:certificate=/etc/hostname"]:
            server = f"tcp:host=127.0.0.1:port=1 {bad}"
            done = knocker("knock", "--server", server, "--knock-file", knock_file)
            self.assertNotIn("Traceback", done.stderr)
            self.assertIn(f"server = {bad}: not a usable endpoint", done.stderr)
            self.assertIn("passed over", done.stderr)
            done = knocker("knock", "--server", bad, "--knock-file", knock_file)
            self.assertEqual(done.returncode, 2, done.stderr)
            self.assertNotIn("Traceback", done.stderr)

    def test_help_lists_the_statuses(self):
        done = knocker("connect", "--help")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("HOST PORT", done.stdout)
        self.assertIn("  15  UNREACHABLE_TARGET", done.stdout)
        self.assertIn("  14  NO_VERDICT", done.stdout)

    def test_unresolvable_host_knocks_nothing(self):
        """
        A HOST that does not resolve is status 15, said before the knock,
        so no one-time knock is spent on it.
        """
        from knocker.client import command

        def resolve(host, port, seconds):
            raise OSError("Name or service not known")

        knocked = []
        self.patch(connect, "resolve", resolve)
        self.patch(command, "run_knock", lambda *args: knocked.append(args))
        directory = self.mktemp()
        os.makedirs(directory)
        knock_file = os.path.join(directory, "alice.knock")
        write_private(knock_file, format_knockfile(SAMPLE))
        status = connect.connect_command(["--knock-file", knock_file, "nowhere.invalid", "22"])
        self.assertEqual((status, knocked), (connect.UNREACHABLE_TARGET, []))

    def test_a_host_name_the_resolver_cannot_encode_knocks_nothing(self):
        """
        A name the idna codec refuses is status 15 with a message, not a
        traceback and status 1, and nothing is knocked.
        """
        from knocker.client import command

        knocked = []
        self.patch(command, "run_knock", lambda *args: knocked.append(args))
        directory = self.mktemp()
        os.makedirs(directory)
        knock_file = os.path.join(directory, "alice.knock")
        write_private(knock_file, format_knockfile(SAMPLE))
        for host in ("\u00e4..b", "xn--\u00e4"):
            with self.assertRaises(OSError) as caught:
                connect.resolve(host, 22)
            self.assertIn("not a usable host name", str(caught.exception))
            status = connect.connect_command(["--knock-file", knock_file, host, "22"])
            self.assertEqual((status, knocked), (connect.UNREACHABLE_TARGET, []))

    def test_closed_standard_output_is_no_traceback(self):
        """
        The knocker command run with standard output closed: the usage
        error's status and message, no traceback from flushing a stream
        Python never opened.
        """
        code = ("import sys\n"
                "sys.argv = ['knocker', 'connect', '--knock-file', '/nonexistent/a.knock', "
                "'h', '22']\n"
                "from knocker import command_line\n"
                "command_line()\n")
        done = subprocess.run([sys.executable, "-c", code], env=environment(),
                              stderr=subprocess.PIPE, timeout=60,
                              preexec_fn=lambda: os.close(1))
        self.assertEqual(done.returncode, 2, done.stderr)
        self.assertIn(b"/nonexistent/a.knock", done.stderr)
        self.assertNotIn(b"Traceback", done.stderr)

    def test_closed_standard_input_is_not_taken_by_the_connection(self):
        """
        Started with standard input closed, the relay must not read its own
        connection as standard input: the remote side gets end of file,
        not its own bytes back, and standard output gets them.
        """
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        code = ("import sys\n"
                "from knocker.client import connect\n"
                "connect.reserve_standard_streams()\n"
                "sock = connect.open_target(connect.resolve('127.0.0.1', %d))\n"
                "sys.exit(connect.relay(sock, name='peer'))\n" % listener.getsockname()[1])
        child = subprocess.Popen([sys.executable, "-c", code], env=environment(),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 preexec_fn=lambda: os.close(0))
        self.addCleanup(child.kill)
        listener.settimeout(10)
        peer, _ = listener.accept()
        peer.settimeout(10)
        peer.sendall(b"SSH-2.0-banner\r\n")
        self.assertEqual(peer.recv(100), b"", "end of file, not the banner sent back")
        peer.close()
        out, err = child.communicate(timeout=10)
        self.assertEqual((child.returncode, out), (0, b"SSH-2.0-banner\r\n"), err)


SAMPLE = KnockFile("alice", bytes(range(32)), 3, "2026-11-25T10:00:00Z", ((3001, 3002),))


class OpenTargetTests(SynchronousTestCase):
    def test_refused_is_retried_for_the_window(self):
        port = free_port()
        started = time.monotonic()
        with self.assertRaises(ConnectionRefusedError):
            connect.open_target(connect.resolve("127.0.0.1", port), window=0.6)
        self.assertGreaterEqual(time.monotonic() - started, 0.6)
        self.assertLess(time.monotonic() - started, 1.5)

    def test_a_listener_that_comes_late_is_reached(self):
        """
        A firewall that follows OPEN a moment late: the attempts go on until
        the port answers.
        """
        port = free_port()
        listener = socket.socket()
        self.addCleanup(listener.close)

        def late():
            time.sleep(0.4)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen()

        thread = threading.Thread(target=late)
        thread.start()
        self.addCleanup(thread.join)
        sock = connect.open_target(connect.resolve("127.0.0.1", port), window=3)
        self.addCleanup(sock.close)
        self.assertEqual(sock.getpeername(), ("127.0.0.1", port))
        self.assertIsNone(sock.gettimeout(), "the relay's socket is blocking")

    def test_each_address_gets_its_share(self):
        """
        With two addresses, a first one that drops every SYN (the family
        the knock did not open) leaves the second its share of the window.
        """
        now = [0.0]
        timeouts = []

        class FakeSocket:
            def __init__(self, family, kind, proto):
                self.family = family

            def settimeout(self, value):
                if value is not None:
                    timeouts.append((self.family, round(value, 3)))
                self.timeout = value

            def connect(self, address):
                if self.family == 10:
                    now[0] += self.timeout
                    raise TimeoutError("timed out")

            def setsockopt(self, *args):
                pass

            def close(self):
                pass

        import _socket

        self.patch(_socket, "socket", FakeSocket)
        addresses = [(10, 1, 6, ("::1", 22, 0, 0)), (2, 1, 6, ("127.0.0.1", 22))]
        sock = connect.open_target(addresses, window=2.0, clock=lambda: now[0])
        self.assertEqual(sock.family, 2)
        self.assertEqual(timeouts, [(10, 1.0), (2, 1.0)])

    def test_a_family_this_host_lacks_is_passed_over(self):
        """
        IPv6 turned off on the client (glibc still answers AAAA, sorted
        last): the IPv6 socket cannot be made, and the IPv4 address is
        still tried for the whole window, not given up at once.
        """
        import _socket

        port = free_port()
        real_socket = _socket.socket

        def no_ipv6(family, kind, proto):
            if family == _socket.AF_INET6:
                raise OSError(errno.EAFNOSUPPORT, "Address family not supported by protocol")
            return real_socket(family, kind, proto)

        self.patch(_socket, "socket", no_ipv6)
        addresses = [(2, 1, 6, ("127.0.0.1", port)), (10, 1, 6, ("::1", port, 0, 0))]
        started = time.monotonic()
        with self.assertRaises(OSError):
            connect.open_target(addresses, window=0.6)
        self.assertGreaterEqual(time.monotonic() - started, 0.6)


def read_some(fd, seconds=10.0) -> bytes:
    ready, _, _ = select.select([fd], [], [], seconds)
    if not ready:
        raise AssertionError(f"nothing to read within {seconds}s")
    return os.read(fd, 65536)


class RelayTests(SynchronousTestCase):
    """
    The relay between pipes and a socket, in this process.
    """

    def start(self, sock):
        stdin_r, self.stdin_w = os.pipe()
        self.stdout_r, stdout_w = os.pipe()
        self.status = []

        def run():
            try:
                self.status.append(connect.relay(sock, stdin_r, stdout_w, "peer"))
            finally:
                os.close(stdout_w)

        thread = threading.Thread(target=run)
        thread.start()
        self.addCleanup(os.close, self.stdout_r)
        self.addCleanup(os.close, stdin_r)
        return thread

    def test_both_ways_and_half_close(self):
        mine, peer = socket.socketpair()
        self.addCleanup(peer.close)
        thread = self.start(mine)
        os.write(self.stdin_w, b"hello")
        self.assertEqual(peer.recv(100), b"hello")
        peer.sendall(b"world")
        self.assertEqual(read_some(self.stdout_r), b"world")
        os.close(self.stdin_w)  # end of input: the peer reads end of file...
        peer.settimeout(10)
        self.assertEqual(peer.recv(100), b"")
        peer.sendall(b"still here")  # ...and may still answer
        self.assertEqual(read_some(self.stdout_r), b"still here")
        peer.close()  # the remote side closes: done, status 0
        thread.join(10)
        self.assertEqual(self.status, [0])
        self.assertEqual(read_some(self.stdout_r), b"", "stdout closed after")

    def start_over_tcp(self):
        """The relay on a loopback TCP connection: (the peer's socket, the thread)."""
        listener = socket.create_server(("127.0.0.1", 0))
        self.addCleanup(listener.close)
        mine = socket.create_connection(listener.getsockname())
        peer, _ = listener.accept()
        self.addCleanup(peer.close)
        thread = self.start(mine)
        self.addCleanup(os.close, self.stdin_w)
        return peer, thread

    def test_a_failed_read_of_standard_input_is_status_1(self):
        """
        Standard input that cannot be read (here a folder): the remote side
        gets end of file, says so on standard error, and the status is 1,
        not the 0 of an upload that ended well.
        """
        mine, peer = socket.socketpair()
        self.addCleanup(peer.close)
        folder = os.open("/", os.O_RDONLY)
        self.addCleanup(os.close, folder)
        stdout_r, stdout_w = os.pipe()
        self.addCleanup(os.close, stdout_r)
        status = []

        def run():
            try:
                status.append(connect.relay(mine, folder, stdout_w, "peer"))
            finally:
                os.close(stdout_w)

        thread = threading.Thread(target=run)
        thread.start()
        peer.settimeout(10)
        self.assertEqual(peer.recv(100), b"", "end of file sent up")
        peer.close()
        thread.join(10)
        self.assertEqual(status, [connect.RELAY_FAILED])

    def test_reset_is_status_1(self):
        peer, thread = self.start_over_tcp()
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        peer.close()  # linger 0: a reset
        thread.join(10)
        self.assertEqual(self.status, [connect.RELAY_FAILED])

    def test_a_reset_while_input_streams_is_status_1(self):
        """
        A reset that the sending thread's C{sendall} takes leaves the
        receiving side an end of file; it is still a failure (before,
        status 0 in about a third of the runs).
        """
        for attempt in range(15):
            listener = socket.create_server(("127.0.0.1", 0))
            mine = socket.create_connection(listener.getsockname())
            peer, _ = listener.accept()
            listener.close()
            zero = os.open("/dev/zero", os.O_RDONLY)
            self.addCleanup(os.close, zero)
            stdout_r, stdout_w = os.pipe()
            status = []

            def run(mine, zero, stdout_w, status):
                try:
                    status.append(connect.relay(mine, zero, stdout_w, "peer"))
                finally:
                    os.close(stdout_w)

            thread = threading.Thread(target=run, args=(mine, zero, stdout_w, status),
                                      daemon=True)
            thread.start()
            peer.recv(65536)
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                            b"\x01\x00\x00\x00\x00\x00\x00\x00")
            peer.close()  # linger 0, unread data: a reset
            thread.join(10)
            os.close(stdout_r)
            self.assertEqual(status, [connect.RELAY_FAILED], f"attempt {attempt}")

    def test_an_orderly_close_that_refuses_late_input_is_status_0(self):
        """
        The remote side sends its last bytes and closes in order; input
        that comes after is refused by its kernel (a reset, EPIPE here):
        the remote side closed, status 0, and every byte it sent is out.
        """
        peer, thread = self.start_over_tcp()
        peer.sendall(b"x" * 100_000)
        peer.close()  # nothing unread: a FIN
        time.sleep(0.2)  # the relay is held writing to the stdout pipe nobody reads yet
        os.write(self.stdin_w, b"late\n")  # sent after the FIN: refused with a reset
        time.sleep(0.2)
        got = b""
        while True:
            data = read_some(self.stdout_r)
            if not data:
                break
            got += data
        thread.join(10)
        self.assertEqual((self.status, len(got)), ([0], 100_000))

class EchoServer:
    """
    A TCP server on 127.0.0.1 in a thread: echoes each connection until
    end of file, then closes it; or, with C{banner}, sends it and closes.
    """

    def __init__(self, banner: bytes | None = None):
        self.banner = banner
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn):
        with conn:
            if self.banner is not None:
                conn.sendall(self.banner)
                return
            while data := conn.recv(65536):
                conn.sendall(data)

    def close(self):
        self.listener.close()


class ConnectCommandTests(DaemonCase):
    """
    The real C{knocker connect} (C{python -m knocker.main connect}) against
    a real daemon: stdin and stdout are pipes, the target an echo server.
    """

    def setUp(self):
        super().setUp()
        self.configure()
        self.knock_file = self.generate()
        self.start()

    def options(self, knock_file=None):
        return ["--server", f"tcp:host=127.0.0.1:port={self.port}",
                "--knock-file", knock_file or self.knock_file,
                "--log-file", os.path.join(self.dir, "client.log")]

    def echo(self, banner=None) -> EchoServer:
        server = EchoServer(banner)
        self.addCleanup(server.close)
        return server

    def popen(self, *args, python=()):
        process = subprocess.Popen(
            [sys.executable, *python, "-m", "knocker.main", "connect", *args],
            env=environment(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.addCleanup(_reap, process)
        return process

    def test_open_then_bytes_round_trip(self):
        """
        The knock opens (the on-success program ran), then every byte of
        standard input comes back from the echo server on standard output;
        end of input half-closes, the server closes, the status is 0.
        """
        server = self.echo()
        data = os.urandom(300_000)
        done = subprocess.run(
            [sys.executable, "-m", "knocker.main", "connect", *self.options(),
             "127.0.0.1", str(server.port)],
            input=data, capture_output=True, env=environment(), timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        self.assertEqual(len(done.stdout), len(data))
        self.assertTrue(done.stdout == data, "the bytes came back changed")
        self.assertEqual(done.stderr, b"")
        self.assertEqual([e["event"] for e in self.events() if e["event"] in ("grant", "open")],
                         ["grant", "open"])
        self.assertEqual(server.connections, 1)

    def test_the_relay_runs_with_the_cycle_collector_on(self):
        """
        The knocker command knocks with the cycle collector off (a knock lives
        milliseconds); the relay, which lasts as long as the session it
        carries, runs with it on.
        """
        server = self.echo()
        spy = (
            "import gc, sys\n"
            "gc.disable()\n"
            "import knocker.client.connect as connect\n"
            "relay = connect.relay\n"
            "def spying(*args, **kwargs):\n"
            "    print('collector on:', gc.isenabled(), file=sys.stderr)\n"
            "    return relay(*args, **kwargs)\n"
            "connect.relay = spying\n"
            "sys.exit(connect.connect_command(sys.argv[1:]))\n"
        )
        done = subprocess.run(
            [sys.executable, "-c", spy, *self.options(), "127.0.0.1", str(server.port)],
            input=b"ping", capture_output=True, env=environment(), timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr.decode())
        self.assertEqual(done.stdout, b"ping")
        self.assertEqual(done.stderr, b"collector on: True\n")

    def test_interactive_both_ways(self):
        """
        Line by line, as ssh talks: each write is answered before the next,
        so the relay carries both directions at once, not input then output.
        """
        server = self.echo()
        process = self.popen(*self.options(), "127.0.0.1", str(server.port))
        out = process.stdout.fileno()
        for line in (b"SSH-2.0-test\r\n", b"x" * 10, b"last\n"):
            process.stdin.write(line)
            process.stdin.flush()
            got = b""
            while len(got) < len(line):
                got += read_some(out, 20)
            self.assertEqual(got, line)
        process.stdin.close()
        self.assertEqual(process.wait(20), 0, process.stderr.read().decode())
        self.assertEqual(process.stdout.read(), b"")

    def test_remote_close_ends_it_with_input_still_open(self):
        """
        The remote side closing is the end: status 0 even though standard
        input was never closed.
        """
        server = self.echo(banner=b"hello from the server\n")
        process = self.popen(*self.options(), "127.0.0.1", str(server.port))
        self.assertEqual(process.wait(30), 0, process.stderr.read().decode())
        self.assertEqual(process.stdout.read(), b"hello from the server\n")

    def test_open_but_target_unreachable_is_15(self):
        """
        OPEN, but nothing listens on HOST:PORT: retried for the connect
        window, then status 15 with a message; nothing on standard output.
        """
        port = free_port()
        started = time.monotonic()
        done = knocker("connect", *self.options(), "127.0.0.1", str(port))
        elapsed = time.monotonic() - started
        self.assertEqual((done.returncode, done.stdout), (connect.UNREACHABLE_TARGET, ""),
                         done.stderr)
        self.assertIn(f"the knock was OPEN but 127.0.0.1:{port} could not be reached within 2s",
                      done.stderr)
        self.assertIn("Connection refused", done.stderr)
        self.assertGreaterEqual(elapsed, connect.CONNECT_WINDOW)
        self.assertEqual(len(self.events("open")), 1)

    def test_unknown_knock_file_same_as_knock(self):
        server = self.echo()
        missing = os.path.join(self.dir, "nobody.knock")
        knock = self.knock(missing)
        done = knocker("connect", *self.options(missing), "127.0.0.1", str(server.port))
        self.assertEqual(knock.returncode, 2)
        self.assertEqual((done.returncode, done.stdout), (2, ""))
        self.assertIn("nobody.knock", done.stderr)
        self.assertEqual(knock.stderr.replace("knocker knock:", "knocker connect:"), done.stderr)
        self.assertEqual(server.connections, 0)
        self.assertEqual(self.events("grant"), [])


class DeniedTests(DaemonCase):
    def test_denied_same_as_knock(self):
        """
        A forged secret: DENIED, status 4, from C{knocker connect} as from
        C{knocker knock}, with the same message on standard error and
        nothing on standard output.  (never-lock keeps the first denial from
        locking the second knock out.)
        """
        self.configure(never_lock="127.0.0.0/8")
        good = self.generate()
        self.start()
        forged = os.path.join(self.dir, "forged.knock")
        kf = parse_knockfile(read_private(good), good)
        write_private(forged, format_knockfile(kf.replace(secret=b"\x07" * 32)))
        server = EchoServer()
        self.addCleanup(server.close)
        knock = self.knock(forged)
        done = knocker("connect", "--server", f"tcp:host=127.0.0.1:port={self.port}",
                       "--knock-file", forged, "--log-file", os.path.join(self.dir, "client.log"),
                       "127.0.0.1", str(server.port))
        self.assertEqual(knock.returncode, 4, knock.stderr)
        self.assertEqual((done.returncode, done.stdout), (4, ""), done.stderr)
        self.assertEqual(done.stderr, knock.stderr)
        self.assertIn("knocker: DENIED", done.stderr)
        self.assertEqual(server.connections, 0)
        self.assertEqual(len(self.events("denied")), 2)


MODULES_AT_EXIT = (
    "import atexit, sys\n"
    "atexit.register(lambda: sys.stderr.write('MODULES ' + ' '.join(sorted(sys.modules)) + '\\n'))\n"
    "from knocker.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


class FastPathTests(DaemonCase):
    def modules(self, *args, stdin=b"") -> tuple[int, set[str]]:
        done = subprocess.run([sys.executable, "-c", MODULES_AT_EXIT, *args], input=stdin,
                              capture_output=True, env=environment(), timeout=60)
        lines = done.stderr.decode().splitlines()
        self.assertTrue(lines and lines[-1].startswith("MODULES "), done.stderr)
        return done.returncode, set(lines[-1].split()[1:])

    def test_imports(self):
        """
        C{knocker connect} on a plain C{tcp:} server knocks and relays
        without argparse or the reactor; C{knocker knock} never loads
        knocker.client.connect, the daemon's keys or its half of the
        handshake, or itertools (whose set-up costs a tenth of a
        millisecond; the whole-file check uses it on a file's first knock
        only).
        """
        self.configure()
        knock_file = self.generate()
        self.start()
        server = EchoServer()
        self.addCleanup(server.close)
        # A file changed in the last two seconds is checked at every knock
        # (knocker.files.SETTLED_SECONDS): let it settle, so the first knock
        # remembers its check and the second makes none.
        age = time.time() - os.stat(knock_file).st_ctime
        time.sleep(max(0.0, SETTLED_SECONDS + 0.1 - age))
        options = ["--server", f"tcp:host=127.0.0.1:port={self.port}", "--knock-file",
                   knock_file, "--log-file", os.path.join(self.dir, "client.log")]
        status, modules = self.modules("connect", *options, "127.0.0.1", str(server.port),
                                       stdin=b"ping")
        self.assertEqual(status, 0)
        self.assertEqual(server.connections, 1)
        self.assertIn("knocker.client.connect", modules)
        for heavy in ("argparse", "twisted.internet.reactor", "asyncio", "hmac", "socket"):
            self.assertNotIn(heavy, modules)
        status, modules = self.modules("knock", *options)
        self.assertEqual(status, 0)
        self.assertIn("knocker.core.config", modules)
        for unused in ("knocker.client.connect", "knocker.core.serverconfig",
                       "knocker.core.serverhandshake", "itertools"):
            self.assertNotIn(unused, modules)


def _reap(process):
    if process.poll() is None:
        process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout, process.stderr):
        if stream is not None:
            stream.close()


class BadEndpointTests(SynchronousTestCase):
    """
    A server endpoint the config check lets through but no driver can use
    is a usage error (exit 2) with a message naming it, not a traceback and
    not UNREACHABLE; in a fleet's list it is named and passed over, and
    the next gateway is tried.
    """

    def knock(self, server: str, *extra: str):
        directory = self.mktemp()
        os.makedirs(directory)
        knock_file = os.path.join(directory, "alice.knock")
        write_private(knock_file, format_knockfile(SAMPLE))
        return knocker("knock", "--server", server, "--knock-file", knock_file, "--log-file",
                       os.path.join(directory, "client.log"), "--timeout", "5", *extra)

    def test_each_is_a_usage_error_with_a_reason(self):
        for server in ("tcp:host=127.0.0.1:port=99999", "tcp:host=ex\u00e4mple.org:port=7000",
                       "foo:bar", f"tcp:host=127.0.0.1:port={free_port()}:bogus=1",
                       "tls:127.0.0.1"):
            done = self.knock(server)
            self.assertEqual(done.returncode, 2, f"{server}: {done.stdout}{done.stderr}")
            self.assertNotIn("Traceback", done.stderr, server)
            self.assertIn(f"server = {server}: not a usable endpoint (", done.stderr, server)

    def test_a_bad_first_gateway_is_passed_over(self):
        port = free_port()
        done = self.knock(f"tcp:host=127.0.0.1:port=99999 tcp:host=127.0.0.1:port={port}", "-v")
        self.assertEqual(done.returncode, 3, done.stderr)
        self.assertIn("server = tcp:host=127.0.0.1:port=99999: not a usable endpoint (port "
                      "99999 is not 1-65535); passed over", done.stderr)
        self.assertIn("Connection refused", done.stderr)


class ConnectRenewalTests(DaemonCase):
    """
    A renewal taken at the OPEN is said on standard error without -v, as
    C{knocker knock} says it: an ssh user learns the file was replaced (or
    why it could not be).
    """

    def test_the_renewal_is_said(self):
        self.configure(renew_at=20)  # due at once: the file has 20 knocks
        knock_file = self.generate(knocks=20)
        self.start()
        server = EchoServer()
        self.addCleanup(server.close)
        done = subprocess.run(
            [sys.executable, "-m", "knocker.main", "connect",
             "--server", f"tcp:host=127.0.0.1:port={self.port}", "--knock-file", knock_file,
             "--log-file", os.path.join(self.dir, "client.log"), "127.0.0.1", str(server.port)],
            input=b"ping", capture_output=True, env=environment(), timeout=60,
        )
        self.assertEqual((done.returncode, done.stdout), (0, b"ping"), done.stderr.decode())
        self.assertIn("OPEN", done.stderr.decode())
        self.assertIn("renewed", done.stderr.decode())
