"""
The console of a real `twistd knockserver` (docs/console.md): the login URL
from `knocker console`, /metrics for a bearer token, `knocker report`,
`knocker unlock` and `knocker revoke` on the running daemon, what they say
when it is not running, and a plain-TCP admin endpoint off loopback
refused at start.
"""

import json
import os
import socket
import stat
import subprocess
import urllib.request
from urllib.parse import urlencode

from knocker.admin.demo import twistd_command
from knocker.state.sqlite import SQLiteStore
from tests.helpers.processes import DaemonCase, environment, knocker, write_config

ADMIN = "tcp:0:interface=127.0.0.1"


def get(url: str, token: str | None = None, post: dict | None = None) -> tuple[int, bytes]:
    """C{url} fetched (POSTed C{post}, if given), with a bearer C{token}."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}
                                     if token else {},
                                     data=None if post is None else urlencode(post).encode())
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class ConsoleDaemonCase(DaemonCase):
    """
    A daemon with its console on a free loopback port.
    """

    def lock_myself_out(self, knock_file) -> None:
        """
        A stray hit on a pool port locks 127.0.0.1 out (lockout-scope =
        source); a knock then gets LOCKED.
        """
        store = SQLiteStore(os.path.join(self.dir, "state"))
        port = store.pool()[0]
        store.close()
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
        locked = self.knock(knock_file)
        self.assertNotEqual(locked.returncode, 0)
        self.assertIn("LOCKED", locked.stdout + locked.stderr)


class ConsoleProcessTests(ConsoleDaemonCase):
    def setUp(self):
        super().setUp()
        self.configure(admin=ADMIN, lockout=600, lockout_scope="source")
        self.alice = self.generate("alice", knocks=10)

    def url(self) -> str:
        done = knocker("console", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        return done.stdout.strip()

    def test_console_url_bearer_metrics_and_report(self):
        start = self.start().wait_ready()
        self.assertGreater(start["admin_port"], 0)
        self.assertOpens(self.alice)
        url = self.url()
        self.assertRegex(url, rf"^http://127\.0\.0\.1:{start['admin_port']}/login\?token=")
        base = url.split("login")[0]
        self.assertEqual(get(base)[0], 401, "nothing without a login")
        console_dir = os.path.join(self.dir, "state", "console")
        for name in os.listdir(console_dir):
            mode = stat.S_IMODE(os.stat(os.path.join(console_dir, name)).st_mode)
            self.assertEqual(mode, 0o600, name)
        token = knocker("console", "--token", "--config", self.server_conf).stdout.strip()
        with open(os.path.join(console_dir, "tokens")) as handle:
            self.assertNotIn(token, handle.read(), "only its hash is kept")
        code, body = get(base + "metrics", token)
        self.assertEqual(code, 200)
        self.assertIn(b'knocker_knocks_total{verdict="open"} 1.0', body)
        self.assertIn(b'knocker_knocks_left{client="alice"} 9.0', body)
        self.assertEqual(get(base + "metrics", "x" * 43)[0], 401)
        done = knocker("report", "--config", self.server_conf, "--format", "json")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(json.loads(done.stdout)["totals"]["opens"], 1)

    def test_unlock_and_revoke_act_at_once(self):
        self.start()
        self.lock_myself_out(self.alice)
        done = knocker("unlock", "--source", "127.0.0.1", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn("lifted: 127.0.0.1", done.stdout)
        self.assertOpens(self.alice)
        done = knocker("revoke", "alice", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        denied = self.knock(self.alice)
        self.assertNotEqual(denied.returncode, 0)
        self.assertIn("DENIED", denied.stdout + denied.stderr)
        events = [e["event"] for e in self.events()]
        self.assertIn("admin-lift", events)
        self.assertIn("admin-revoke", events)
        self.assertEqual(self.events("denied")[-1]["reason"], "revoked")
        # knocker status says so, rather than list alice as any other client.
        done = knocker("status", "--config", self.server_conf)
        [line] = [line for line in done.stdout.splitlines() if "alice" in line]
        self.assertIn("REVOKED", line)
        report = json.loads(knocker("status", "--config", self.server_conf, "--json").stdout)
        self.assertEqual([c["revoked"] for c in report["clients"]], [True])

    def test_commands_get_through_a_full_console(self):
        """
        Anyone on the gateway can fill the console's connections from
        127.0.0.1 (20 an address).  unlock and revoke still act, through
        the daemon's commands socket (0600, in the state's private folder),
        whose connections have a budget of their own.
        """
        start = self.start().wait_ready()
        held = [socket.create_connection(("127.0.0.1", start["admin_port"]), timeout=5)
                for _ in range(20)]
        self.addCleanup(lambda: [connection.close() for connection in held])
        with socket.create_connection(("127.0.0.1", start["admin_port"]), timeout=5):
            # Full from this address: its oldest connection without a
            # session is cut to make room (the console is taken in turns).
            try:
                self.assertEqual(held[0].recv(200), b"", "the oldest was cut")
            except ConnectionResetError:
                pass
        path = os.path.join(self.dir, "state", "console", "commands.sock")
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        # The console's own URL made useless, so only the socket can serve:
        # (the held connections would be cut after 10 s).
        published = os.path.join(self.dir, "state", "console", "daemon.json")
        with open(published) as handle:
            daemon = json.load(handle)
        with socket.socket() as closed:
            closed.bind(("127.0.0.1", 0))
            dead = closed.getsockname()[1]
        with open(published, "w") as handle:
            json.dump({**daemon, "url": f"http://127.0.0.1:{dead}/"}, handle)
        done = knocker("revoke", "alice", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.events("admin-revoke")[-1]["client"], "alice")
        self.daemon.stop()
        self.assertFalse(os.path.exists(path), "the socket outlived the daemon")

    def test_commands_say_when_the_daemon_is_not_running(self):
        for command in (["unlock", "--all"], ["revoke", "alice"], ["console"]):
            done = knocker(*command, "--config", self.server_conf)
            self.assertEqual(done.returncode, 1, command)
            self.assertIn("not running", done.stderr)
        self.start()
        self.daemon.stop()
        done = knocker("unlock", "--all", "--config", self.server_conf)
        self.assertEqual(done.returncode, 1)
        self.assertIn("not running", done.stderr)

    def test_commands_say_what_to_do_with_the_console_off(self):
        self.configure(admin="")
        self.start()
        for command in (["unlock", "--all"], ["revoke", "alice"]):
            done = knocker(*command, "--config", self.server_conf)
            self.assertEqual(done.returncode, 1, command)
            self.assertIn("admin is empty in the server configuration", done.stderr)
            self.assertIn("knocker generate CLIENT --force", done.stderr)

    def test_plain_tcp_off_loopback_refused_at_start(self):
        conf = write_config(os.path.join(self.dir, "open.conf"), "server",
                            central="tcp:0:interface=127.0.0.1", state_dir="state2",
                            admin="tcp:8750:interface=0.0.0.0")
        done = subprocess.run([*twistd_command(), "-n", "--pidfile=", "knockserver", "--config",
                               conf], cwd=self.dir, env=environment(), capture_output=True,
                              text=True, timeout=60)
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("admin", done.stdout + done.stderr)
        self.assertIn("ssl:", done.stdout + done.stderr)


class ConsoleOverTLSTests(ConsoleDaemonCase):
    """
    admin = ssl: on every address (allowed: TLS), the session cookie marked
    Secure, and knocker unlock through https on loopback.
    """

    def test_commands_reach_a_tls_console_on_its_own_address(self):
        """
        unlock and revoke trust the certificate the daemon serves (the file
        its admin endpoint names), on any address: here 127.0.0.2, which the
        certificate does not name, and with a CA the system does not know.
        """
        from tests.network import tls

        ca = tls.make_ca(self.dir)
        files = tls.make_server(self.dir, ca, dns_names=["console.test"], ips=["192.0.2.1"])
        self.configure(admin=tls.server_endpoint(files, port=0, interface="127.0.0.2"))
        self.generate("alice")
        self.start()
        # Without the commands socket (a daemon that could not make it),
        # the commands go to the console itself, over TLS.
        os.unlink(os.path.join(self.dir, "state", "console", "commands.sock"))
        done = knocker("unlock", "--all", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.events("admin-lift")[-1]["by"], "bearer")
        # Its file gone, the socket still stops cleanly.
        self.daemon.stop()
        self.assertNotIn("Traceback", self.daemon.log())

    def test_commands_trust_the_served_certificate_alone(self):
        """
        A certKey file holding the chain (server certificate, then its CA):
        the commands trust the first, the one served, not the CA, which
        would make whatever else it signed trusted too.
        """
        from knocker.console.cli import _context
        from knocker.core.serverconfig import parse_server_config
        from tests.network import tls

        ca = tls.make_ca(self.dir)
        files = tls.make_server(self.dir, ca)
        chain = os.path.join(self.dir, "fullchain.pem")
        with open(chain, "w") as out:
            out.write(open(files.cert_path).read() + open(ca.cert_path).read())
        config = parse_server_config(overrides={
            "state-dir": self.dir,
            "admin": f"ssl:8750:interface=0.0.0.0:privateKey={files.key_path}:certKey={chain}"})
        context = _context("https://127.0.0.1:8750/", config)
        self.assertEqual(context.cert_store_stats(), {"x509": 1, "crl": 0, "x509_ca": 0},
                         "one certificate trusted, and no CA")

    def test_tls_console(self):
        import http.client
        import socket
        import ssl
        import urllib.parse

        from tests.network import tls

        ca = tls.make_ca(self.dir)
        files = tls.make_server(self.dir, ca, dns_names=["console.test"], ips=["127.0.0.1"])
        self.configure(admin=tls.server_endpoint(files, port=0, interface="0.0.0.0"))
        self.generate("alice")
        self.start()
        url = knocker("console", "--config", self.server_conf).stdout.strip()
        self.assertTrue(url.startswith("https://127.0.0.1:"), url)
        parts = urllib.parse.urlsplit(url)
        context = ssl.create_default_context(cafile=ca.cert_path)
        connection = http.client.HTTPSConnection("127.0.0.1", parts.port, context=context,
                                                 timeout=10)
        origin = f"https://127.0.0.1:{parts.port}"
        connection.request("POST", "/login", body=f"token={parts.query[6:]}", headers={
            "Content-Type": "application/x-www-form-urlencoded", "Origin": origin})
        reply = connection.getresponse()
        reply.read()
        self.assertEqual(reply.status, 302)
        cookie = reply.getheader("Set-Cookie")
        self.assertIn("Secure", cookie)
        self.assertIn("HttpOnly", cookie)
        done = knocker("unlock", "--all", "--config", self.server_conf)
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertEqual(self.events("admin-lift")[-1]["by"], "bearer")
        # A client that would rather speak HTTP/2 gets HTTP/1.1, and with
        # it the body limit (twisted.web's HTTP/2, present when h2 is
        # installed, would skip it).
        context.set_alpn_protocols(["h2", "http/1.1"])
        with socket.create_connection(("127.0.0.1", parts.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
            self.assertEqual(tls_socket.selected_alpn_protocol(), "http/1.1")
            tls_socket.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Length: 1000000\r\n\r\n")
            self.assertTrue(tls_socket.recv(100).startswith(b"HTTP/1.1 413 "))
        # A request line over 16 KiB: answered and closed at once (over TLS
        # twisted.web's own close waited for the 60 s idle timeout).
        with socket.create_connection(("127.0.0.1", parts.port), timeout=5) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls_socket:
            tls_socket.sendall(b"GET /login?x=" + b"a" * 17000 + b" HTTP/1.1\r\n")
            self.assertTrue(tls_socket.recv(100).startswith(b"HTTP/1.1 431 "))

