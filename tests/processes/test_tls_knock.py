"""
The central port over TLS, with the real programs on 127.0.0.1: the daemon
serves C{ssl:} with a certificate from the test CA (tests/network/tls.py),
C{knocker knock} connects with a C{tls:} endpoint that trusts that CA and
checks the server's name.  Only the right CA and the right name get a
handshake; a failed TLS handshake is UNREACHABLE (exit 3) with the reason,
and the knock server sees no handshake at all: nothing granted, nothing
burned, no lockout.
"""

import os
import socket
import time

from tests.helpers.processes import DaemonCase
from tests.network import tls


class TLSKnockTests(DaemonCase):
    def setUp(self):
        super().setUp()
        self.ca = tls.make_ca(self.dir)
        self.files = tls.make_server(self.dir, self.ca, dns_names=["knock.test", "localhost"],
                                     ips=["127.0.0.1"])
        self.central = tls.server_endpoint(self.files, port=0, interface="127.0.0.1")
        self.configure(central=self.central)
        self.knock_file = self.generate()

    def server(self, trust_dir, name):
        return tls.client_endpoint(trust_dir, name, self.port, connect_to="127.0.0.1")

    def assertRefusedBeforeTheHandshake(self, result, *reasons):
        self.assertEqual(result.returncode, 3, result.stdout + result.stderr)
        self.assertIn("UNREACHABLE", result.stderr)
        self.assertIn("TLS handshake failed", result.stderr)
        for reason in reasons:
            self.assertIn(reason, result.stderr)
        self.assertIn("no knock granted", result.stderr)
        self.assertEqual(
            [e["event"] for e in self.events() if e["event"] != "start"], [],
            "the knock server saw something of a refused TLS connection",
        )
        self.assertEqual(self.status()["clients"][0]["used"], 0)
        self.assertEqual(self.status()["lockouts"], {})

    def test_right_ca_and_name(self):
        """
        The test CA and the certificate's name: OPEN, knock 1.
        """
        self.start()
        self.assertOpens(self.knock_file, server=self.server(self.ca.trust_dir, "knock.test"))
        self.assertEqual([e["index"] for e in self.events("grant")], [1])
        self.assertEqual([e["index"] for e in self.events("open")], [1])

    def test_a_server_named_by_a_host_name(self):
        """
        The client looks the name up itself (knocker/client/resolver.py),
        connects to what it finds and checks the certificate against the
        name: OPEN.
        """
        self.start()
        self.assertOpens(self.knock_file,
                         server=tls.client_endpoint(self.ca.trust_dir, "localhost", self.port))
        self.assertEqual([e["index"] for e in self.events("open")], [1])

    def test_a_client_that_offers_alpn(self):
        """
        TLS clients that name protocols (ALPN), as proxies and most TLS
        libraries do: knocker/1 is agreed and the exchange starts (Twisted
        failed every such handshake while the central port named none).
        """
        import socket
        import ssl

        self.start()
        context = ssl.create_default_context(cafile=self.ca.cert_path)
        context.set_alpn_protocols(["knocker/1"])
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as raw, \
                context.wrap_socket(raw, server_hostname="knock.test") as tls_socket:
            self.assertEqual(tls_socket.selected_alpn_protocol(), "knocker/1")
            tls_socket.sendall(b"KNOCKER/1 HELLO alice\n")
            self.assertTrue(tls_socket.recv(200).startswith(b"CHALLENGE "))

    def test_wrong_server_name(self):
        """
        A name the certificate does not hold: refused by the client during
        the TLS handshake (exit 3, the reason said), nothing granted; then
        the right name still opens (no lockout).
        """
        self.start()
        result = self.knock(self.knock_file, server=self.server(self.ca.trust_dir, "other.test"))
        self.assertRefusedBeforeTheHandshake(result, "not for this name", "other.test")
        self.assertOpens(self.knock_file, server=self.server(self.ca.trust_dir, "knock.test"))

    def test_untrusted_certificate(self):
        """
        A server certificate from a CA the client does not trust (the right
        name): the same refusal, nothing granted.
        """
        self.start()
        other = tls.make_ca(self.dir, name="another CA", basename="other")
        result = self.knock(self.knock_file, server=self.server(other.trust_dir, "knock.test"))
        self.assertRefusedBeforeTheHandshake(result, "certificate verify failed")
        self.assertOpens(self.knock_file, server=self.server(self.ca.trust_dir, "knock.test"))

    def test_plain_tcp_client_gets_nothing(self):
        """
        A plain-TCP client against the TLS central port: its HELLO is not
        TLS, the server drops the connection, the knock ends without a
        verdict (exit 14) instead of hanging, and nothing is granted.
        """
        self.start()
        result = self.knock(self.knock_file, "--timeout", "3",
                            server=f"tcp:host=127.0.0.1:port={self.port}")
        self.assertEqual(result.returncode, 14, result.stdout + result.stderr)
        self.assertIn("no knock granted", result.stderr)
        self.assertEqual(self.events("grant"), [])

    def test_unfinished_tls_handshakes_are_closed(self):
        """
        TCP connections that never finish the TLS handshake (silent, or a
        ClientHello cut short) are closed once handshake-timeout has
        passed, and so are the ones refused past max-connections: idle
        connections can neither fill the central port for good nor pile
        up descriptors.  A TLS client then gets OPEN.
        """
        self.configure(central=self.central, max_connections=3, handshake_timeout=1)
        self.start()
        pid = self.daemon.process.pid
        descriptors = len(os.listdir(f"/proc/{pid}/fd"))
        socks = []
        for n in range(23):  # three taken, twenty past max-connections
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            self.addCleanup(sock.close)
            if n == 1:
                sock.sendall(b"\x16\x03\x01\x00\xc8\x01\x00")  # a ClientHello, cut short
            sock.settimeout(0.01)
            socks.append(sock)
        started = time.monotonic()
        closed = set()
        while len(closed) < len(socks) and time.monotonic() - started < 6:
            for n, sock in enumerate(socks):
                if n in closed:
                    continue
                try:
                    if sock.recv(4096) == b"":
                        closed.add(n)
                except socket.timeout:
                    pass
                except OSError:
                    closed.add(n)
        still_open = sorted(set(range(len(socks))) - closed)
        self.assertEqual(
            still_open, [],
            f"connections still open 6 s after connecting (handshake-timeout 1 s); "
            f"the daemon holds {len(os.listdir(f'/proc/{pid}/fd')) - descriptors} more "
            f"descriptors than before; audit errors: "
            f"{sorted(e.get('reason') for e in self.events('error'))}",
        )
        self.assertOpens(self.knock_file, server=self.server(self.ca.trust_dir, "knock.test"))
        deadline = time.monotonic() + 5
        while len(os.listdir(f"/proc/{pid}/fd")) > descriptors and time.monotonic() < deadline:
            time.sleep(0.05)
        self.assertEqual(len(os.listdir(f"/proc/{pid}/fd")), descriptors, "descriptors leaked")
