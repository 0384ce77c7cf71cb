"""
knocker.client.resolver: host names for the Twisted driver, each looked up
in a thread that nothing waits for at shutdown.
"""

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IResolutionReceiver
from twisted.trial.unittest import TestCase
from zope.interface import implementer

from knocker.client.resolver import DetachedResolver


@implementer(IResolutionReceiver)
class Receiver:
    def __init__(self):
        self.began = None
        self.addresses = []
        self.done = defer.Deferred()

    def resolutionBegan(self, resolution):
        self.began = resolution

    def addressResolved(self, address):
        self.addresses.append(address)

    def resolutionComplete(self):
        self.done.callback(self.addresses)


class DetachedResolverTests(TestCase):
    def resolve(self, name, port=7000, types=None):
        receiver = Receiver()
        resolution = DetachedResolver(reactor).resolveHostName(receiver, name, port, types)
        self.assertIs(receiver.began, resolution)
        self.assertEqual(resolution.name, name)
        return receiver.done

    @defer.inlineCallbacks
    def test_a_known_name_gives_its_addresses_in_the_reactor(self):
        addresses = yield self.resolve("localhost", types=[IPv4Address])
        self.assertEqual(addresses, [IPv4Address("TCP", "127.0.0.1", 7000)])

    @defer.inlineCallbacks
    def test_an_address_written_out_is_itself(self):
        addresses = yield self.resolve("::1", 22)
        self.assertEqual(addresses, [IPv6Address("TCP", "::1", 22)])

    @defer.inlineCallbacks
    def test_what_is_not_a_name_resolves_to_nothing(self):
        # A label over 63 characters: the lookup fails before asking anyone,
        # and the connection attempt learns it has nowhere to go.
        addresses = yield self.resolve("a" * 64 + ".example.org")
        self.assertEqual(addresses, [])
