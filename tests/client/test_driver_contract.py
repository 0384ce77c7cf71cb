"""
The knock drivers keep to L{knocker.client.driver}'s interfaces.  They do
not declare them (C{knocker knock} does not import zope.interface), so the
checks are tentative: every method there, with a compatible signature.
"""

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.exceptions import BrokenImplementation, BrokenMethodImplementation, Invalid
from zope.interface.verify import verifyClass, verifyObject

from knocker.client import blocking_driver, twisted_driver
from knocker.client.blocking_driver import BlockingDriver
from knocker.client.driver import IKnockConnection, IKnockDriver
from knocker.client.twisted_driver import TwistedDriver


def without(cls, name):
    """
    A copy of C{cls} without its method C{name}.
    """
    body = {key: value for key, value in vars(cls).items() if key != name}
    return type(f"{cls.__name__}Without_{name}", (), body)


class DriverContractTests(SynchronousTestCase):
    def drivers(self):
        return [BlockingDriver(), TwistedDriver(MemoryReactorClock())]

    def test_drivers_provide_iknockdriver(self):
        for driver in self.drivers():
            self.assertTrue(verifyObject(IKnockDriver, driver, tentative=True), driver)

    def test_drivers_do_not_declare_it(self):
        """
        Tentative on purpose: the drivers keep zope.interface off the
        knock's import path, so they claim nothing.
        """
        for driver in self.drivers():
            self.assertFalse(IKnockDriver.providedBy(driver), driver)

    def test_missing_hit_fails(self):
        for cls in (BlockingDriver, TwistedDriver):
            broken = without(cls, "hit")
            driver = broken.__new__(broken)
            error = self.assertRaises(
                BrokenImplementation, verifyObject, IKnockDriver, driver, tentative=True
            )
            self.assertEqual(error.name.__name__, "hit")

    def test_wrong_signature_fails(self):
        class NoTimeout:
            def now(self):
                return 0.0

            def say(self, message):
                pass

            async def connect(self, endpoint, timeout):
                pass

            async def hit(self, host, port):
                pass

            async def sleep(self, seconds):
                pass

        error = self.assertRaises(
            BrokenMethodImplementation, verifyObject, IKnockDriver, NoTimeout(), tentative=True
        )
        self.assertIn("hit", str(error))


class ConnectionContractTests(SynchronousTestCase):
    def test_connections_implement_iknockconnection(self):
        for cls in (blocking_driver._Connection, twisted_driver._Connection):
            self.assertTrue(verifyClass(IKnockConnection, cls, tentative=True), cls)

    def test_connections_set_peer_host(self):
        """
        verifyClass does not see attributes: C{peer_host} is set in
        C{__init__}, checked here on instances over fake transports.
        """
        from twisted.internet.address import IPv4Address
        from twisted.internet.testing import StringTransport

        class Sock:
            def getpeername(self):
                return ("192.0.2.7", 4000)

        lines = twisted_driver._Lines()
        lines.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.8", 4000)))
        for connection, host in [
            (blocking_driver._Connection(Sock()), "192.0.2.7"),
            (twisted_driver._Connection(MemoryReactorClock(), lines), "192.0.2.8"),
        ]:
            self.assertTrue(verifyObject(IKnockConnection, connection, tentative=True))
            self.assertEqual(connection.peer_host, host)

    def test_missing_readline_fails(self):
        for cls in (blocking_driver._Connection, twisted_driver._Connection):
            self.assertRaises(
                Invalid, verifyClass, IKnockConnection, without(cls, "readline"), tentative=True
            )
