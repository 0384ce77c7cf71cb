"""
The test CA and the endpoint strings of L{tls}: a Twisted TLS server and
client on 127.0.0.1 made from them with serverFromString / clientFromString
connect when the name (or IP address) matches and the CA is trusted, and
fail verification otherwise.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet import defer, protocol, reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.error import ConnectionDone
from twisted.trial.unittest import TestCase

from . import tls

HELLO = b"hello\n"


class _Server(protocol.Protocol):
    def connectionMade(self) -> None:
        self.transport.write(HELLO)

    def connectionLost(self, reason) -> None:
        self.factory.lost.append(reason)
        self.factory.done.callback(None)


class _ServerFactory(protocol.Factory):
    protocol = _Server

    def __init__(self) -> None:
        self.lost: list = []
        self.done = defer.Deferred()


class _Client(protocol.Protocol):
    """
    Reads the server's line, then closes; fires C{done} with (data, reason).
    """

    def __init__(self) -> None:
        self.data = b""
        self.done = defer.Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        if self.data.endswith(b"\n"):
            self.transport.loseConnection()

    def connectionLost(self, reason) -> None:
        self.done.callback((self.data, reason))  # a tuple: never an errback


class TLSEndpointTests(TestCase):
    timeout = 15

    def setUp(self) -> None:
        # not self.mktemp(): under pytest that lands in the working directory
        self.directory = tempfile.mkdtemp(prefix="knocker-tls-")
        self.addCleanup(shutil.rmtree, self.directory, ignore_errors=True)
        self.ca = tls.make_ca(self.directory)
        self.files = tls.make_server(self.directory, self.ca)

    async def _exchange(self, trust_dir: str, host: str, connect_to: str | None = None):
        """
        Serve on 127.0.0.1 port 0, connect a client; return what the client
        read and why its connection ended, once both sides have closed.
        """
        factory = _ServerFactory()
        endpoint = serverFromString(reactor, tls.server_endpoint(self.files, port=0))
        port = await endpoint.listen(factory)
        self.addCleanup(port.stopListening)
        client_string = tls.client_endpoint(
            trust_dir, host, port.getHost().port, connect_to=connect_to
        )
        client = _Client()
        await clientFromString(reactor, client_string).connect(
            protocol.Factory.forProtocol(lambda: client)
        )
        data, reason = await client.done
        await factory.done
        return data, reason

    async def test_dns_name(self) -> None:
        """
        The client checks the name knock.test and connects to 127.0.0.1.
        """
        data, reason = await self._exchange(self.ca.trust_dir, "knock.test", "127.0.0.1")
        self.assertEqual(data, HELLO)
        self.assertTrue(reason.check(ConnectionDone), reason)

    async def test_ip_address(self) -> None:
        """
        A server given by IP address is checked against the IP SAN.
        """
        data, reason = await self._exchange(self.ca.trust_dir, "127.0.0.1")
        self.assertEqual(data, HELLO)
        self.assertTrue(reason.check(ConnectionDone), reason)

    async def test_wrong_name(self) -> None:
        """
        A name the certificate does not hold fails verification.
        """
        data, reason = await self._exchange(self.ca.trust_dir, "other.test", "127.0.0.1")
        self.assertEqual(data, b"")
        self.assertTrue(reason.check(VerificationError), reason)
        self.assertIn("DNSMismatch", str(reason.value))

    async def test_wrong_ip_address(self) -> None:
        """
        An IP address the certificate does not hold fails verification.
        """
        data, reason = await self._exchange(self.ca.trust_dir, "127.0.0.2", "127.0.0.1")
        self.assertEqual(data, b"")
        self.assertTrue(reason.check(VerificationError), reason)
        self.assertIn("IPAddressMismatch", str(reason.value))

    async def test_untrusted_ca(self) -> None:
        """
        A certificate from a CA the client does not trust fails, even with
        the right name.
        """
        other = tls.make_ca(self.directory, name="another CA", basename="other")
        data, reason = await self._exchange(other.trust_dir, "knock.test", "127.0.0.1")
        self.assertEqual(data, b"")
        self.assertTrue(reason.check(SSL.Error), reason)
        self.assertIn("certificate verify failed", str(reason.value))

    async def test_quoted_paths(self) -> None:
        """
        Paths with ':' and '\\' survive the endpoint strings.
        """
        self.directory = os.path.join(self.directory, "odd:dir\\name")
        os.makedirs(self.directory)
        self.ca = tls.make_ca(self.directory)
        self.files = tls.make_server(self.directory, self.ca)
        data, reason = await self._exchange(self.ca.trust_dir, "knock.test", "127.0.0.1")
        self.assertEqual(data, HELLO)

    def test_file_modes(self) -> None:
        """
        Key files are 0600; the trust directory holds only the CA certificate.
        """
        for path in (self.ca.key_path, self.files.key_path):
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        self.assertEqual(os.listdir(self.ca.trust_dir), ["ca.pem"])

    def test_endpoint_strings(self) -> None:
        """
        The strings look as the spec writes them.
        """
        self.assertEqual(
            tls.server_endpoint(tls.ServerFiles("/k/s.pem", "/k/s.key", "/k/t"), port=7000),
            "ssl:7000:interface=127.0.0.1:privateKey=/k/s.key:certKey=/k/s.pem",
        )
        self.assertEqual(
            tls.client_endpoint("/k/t", "knock.test", 7000),
            "tls:host=knock.test:port=7000:timeout=5:trustRoots=/k/t",
        )
        self.assertEqual(
            tls.client_endpoint("/k/t", "knock.test", 7000, connect_to="::1"),
            "tls:host=knock.test:port=7000:timeout=5:trustRoots=/k/t:"
            "endpoint=tcp\\:host=\\\\\\:\\\\\\:1\\:port=7000\\:timeout=5",
        )
