"""
Host names for the Twisted driver, looked up where a silent resolver cannot
hold the command.

Twisted's own resolver calls C{getaddrinfo} in the reactor's thread pool,
and the pool's threads are joined as the reactor stops.  The C resolver has
no deadline of its own, so one that never answered held C{knocker knock}
over C{tls:} until it did: 12 s past a 2 s timeout, measured.  Here each
lookup runs in a daemon thread of its own, left to finish alone once the
knock has given up on it (as the blocking driver's
L{knocker.client.tcp.getaddrinfo_within} does).
"""

import socket
import threading

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IHostnameResolver, IHostResolution
from zope.interface import implementer

_FAMILIES = {
    frozenset([IPv4Address]): socket.AF_INET,
    frozenset([IPv6Address]): socket.AF_INET6,
}


@implementer(IHostResolution)
class _Resolution:
    def __init__(self, name: str):
        self.name = name

    def cancel(self) -> None:
        """Nothing to stop: a late answer finds nobody waiting for it."""


@implementer(IHostnameResolver)
class DetachedResolver:
    """
    An C{IHostnameResolver} whose lookups are never waited for at shutdown.
    """

    def __init__(self, reactor):
        self._reactor = reactor

    def resolveHostName(self, resolutionReceiver, hostName, portNumber=0,
                        addressTypes=None, transportSemantics="TCP"):
        resolution = _Resolution(hostName)
        family = _FAMILIES.get(frozenset(addressTypes or ()), socket.AF_UNSPEC)
        kind = socket.SOCK_STREAM if transportSemantics == "TCP" else socket.SOCK_DGRAM
        resolutionReceiver.resolutionBegan(resolution)

        def deliver(answers):
            for answer_family, _, _, _, address in answers:
                if answer_family == socket.AF_INET:
                    resolutionReceiver.addressResolved(IPv4Address(transportSemantics, *address))
                elif answer_family == socket.AF_INET6:
                    resolutionReceiver.addressResolved(IPv6Address(transportSemantics, *address))
            resolutionReceiver.resolutionComplete()

        def look_up():
            try:
                answers = socket.getaddrinfo(hostName, portNumber, family, kind)
            except Exception:  # no such name, or not one at all (too long, a NUL)
                answers = []
            try:
                self._reactor.callFromThread(deliver, answers)
            except Exception:  # the command went on without it (its reactor gone)
                pass

        threading.Thread(target=look_up, name=f"resolve {hostName}", daemon=True).start()
        return resolution
