"""
The Twisted driver of the knock coroutine, on real loopback sockets.
"""

from twisted.internet import reactor
from twisted.trial.unittest import TestCase


class TwistedDriverTests(TestCase):
    async def test_hit_on_a_closed_port_is_trouble(self):
        import socket

        from knocker.client.knock import Trouble
        from knocker.client.twisted_driver import TwistedDriver

        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        with self.assertRaises(Trouble) as caught:
            await TwistedDriver(reactor).hit("127.0.0.1", port, 2)
        self.assertIn(f"knock on port {port}", str(caught.exception))

    async def test_hit_waits_for_the_server_to_close(self):
        from twisted.internet import protocol

        from knocker.client.twisted_driver import TwistedDriver

        closed = []

        class CloseLater(protocol.Protocol):
            def connectionMade(self):
                reactor.callLater(0.2, self.transport.loseConnection)
                closed.append(reactor.seconds() + 0.2)

        factory = protocol.Factory.forProtocol(CloseLater)
        listening = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(listening.stopListening)
        await TwistedDriver(reactor).hit("127.0.0.1", listening.getHost().port, 5)
        self.assertGreaterEqual(reactor.seconds(), closed[0] - 0.01)


    async def test_hits_come_from_the_central_connections_bind_address(self):
        """
        tcp:...:bindAddress=127.0.0.2: the server must see the hits from
        the address it granted, not from the system's choice.
        """
        from twisted.internet import protocol

        from knocker.client.twisted_driver import TwistedDriver

        seen = []

        class Note(protocol.Protocol):
            def connectionMade(self):
                seen.append(self.transport.getPeer().host)
                self.transport.loseConnection()

        class Quiet(protocol.Protocol):
            pass

        central = reactor.listenTCP(0, protocol.Factory.forProtocol(Quiet),
                                    interface="127.0.0.1")
        self.addCleanup(central.stopListening)
        pool = reactor.listenTCP(0, protocol.Factory.forProtocol(Note), interface="127.0.0.1")
        self.addCleanup(pool.stopListening)
        driver = TwistedDriver(reactor)
        conn = await driver.connect(
            f"tcp:host=127.0.0.1:port={central.getHost().port}:bindAddress=127.0.0.2", 5)
        self.addCleanup(conn.close)
        await driver.hit(conn.peer_host, pool.getHost().port, 5)
        self.assertEqual(seen, ["127.0.0.2"])


class QueueBoundTests(TestCase):
    def test_a_flood_of_lines_is_not_read_faster_than_the_knock_takes_them(self):
        """
        While the knock hits its ports it reads no line; lines that keep
        coming (a hostile server, or a man in the middle of plain TCP) stop
        being read once QUEUED_LINES wait, and are read again as the knock
        takes them: the client's memory stays bounded.
        """
        from twisted.internet.testing import StringTransport

        from knocker.client.knock import run_blocking
        from knocker.client.twisted_driver import QUEUED_LINES, _Connection, _Lines

        lines = _Lines()
        transport = StringTransport()
        lines.makeConnection(transport)
        for _ in range(QUEUED_LINES * 4):
            if transport.producerState == "paused":
                break  # a real transport reads no more: nothing more arrives
            lines.dataReceived(b"ab\n")
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(lines.lines.pending), QUEUED_LINES)
        connection = _Connection(reactor, lines)
        for _ in range(QUEUED_LINES // 2 - 1):
            self.assertEqual(run_blocking(connection.readline(5)), b"ab")
        self.assertEqual(transport.producerState, "paused")
        run_blocking(connection.readline(5))
        self.assertEqual(transport.producerState, "producing")


class ConnectTimeoutTests(TestCase):
    """
    A tls: server whose name resolves but whose address never answers the
    SYN (a firewall that drops): the connect gives up at its timeout as an
    unreachable server, which hands the knock to the next gateway; it used
    to escape as Twisted's ConnectingCancelledError, a traceback.
    """

    def test_a_silent_address_is_unreachable_at_the_timeout(self):
        from twisted.internet import defer
        from twisted.internet.address import IPv4Address
        from twisted.internet.interfaces import IHostnameResolver
        from twisted.internet.testing import MemoryReactorClock
        from zope.interface import implementer

        from knocker.client.knock import Unreachable
        from knocker.client.twisted_driver import TwistedDriver

        @implementer(IHostnameResolver)
        class Answering:
            def resolveHostName(self, receiver, name, portNumber=0, addressTypes=None,
                                transportSemantics="TCP"):
                receiver.resolutionBegan(None)
                receiver.addressResolved(IPv4Address("TCP", "192.0.2.1", portNumber))
                receiver.resolutionComplete()

        clock = MemoryReactorClock()  # its connections never complete
        clock.installNameResolver(Answering())
        connecting = defer.ensureDeferred(
            TwistedDriver(clock).connect("tls:host=door.example.org:port=7000", 1.0))
        clock.advance(0.9)
        self.assertNoResult(connecting)
        clock.advance(0.2)
        failure = self.failureResultOf(connecting, Unreachable)
        self.assertEqual(str(failure.value), "no connection within 1.0s")
