"""
The contract between the knock coroutine (L{knocker.client.knock}) and its
drivers, L{knocker.client.blocking_driver.BlockingDriver} and
L{knocker.client.twisted_driver.TwistedDriver}.

The drivers do not import this module: C{knocker knock} pays for every
import at every knock, and zope.interface is not free.  The tests check
with C{verifyObject(..., tentative=True)} that both keep to it.
"""

from zope.interface import Attribute, Interface


class IKnockDriver(Interface):
    """
    The I{O} of one knock: connecting, knocking, waiting, and the clock.
    """

    def now():
        """Monotonic seconds."""

    def say(message):
        """Report progress to the driver's log (or nowhere)."""

    def connect(endpoint, timeout):
        """
        Awaitable: an L{IKnockConnection} to the central port at
        C{endpoint}, or raise L{knocker.client.knock.Unreachable}.
        """

    def hit(host, port, timeout):
        """
        Awaitable: connect to C{host}:C{port} and wait for the server to
        close; raise L{knocker.client.knock.Trouble} on failure.
        """

    def sleep(seconds):
        """Awaitable: resume after C{seconds}."""


class IKnockConnection(Interface):
    """
    One central-port connection, as the coroutine sees it.  A connection
    may also have C{greeted}: the line its driver said on it before handing
    it over (HELLO said early), which the knock then does not send again;
    without it, nothing was said.  And C{answered}: the
    L{knocker.core.handshake.ClientHandshake} whose CHALLENGE the driver
    read and whose PROOF it said before handing it over, which the knock
    then goes on with; without it (or C{None}), the knock reads the
    CHALLENGE itself.
    """

    peer_host = Attribute("The address the connection reached (the one to knock).")

    def send(line):
        """Write C{line} (bytes, with its newline)."""

    def readline(timeout):
        """
        Awaitable: the next line without its newline, or C{None} once
        closed.  C{timeout} bounds the whole wait, however the bytes
        trickle in; an over-long line raises L{knocker.core.handshake.ProtocolError}.
        """

    def close():
        """Hang up."""
