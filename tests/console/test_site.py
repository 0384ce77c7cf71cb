"""
The console's web server before its gate (knocker/console/site.py): a big
body is refused unread, and past the connection limit a connection is
turned away, so nobody can take the daemon's memory, reactor or file
descriptors through the console.  First over fake transports, then once
over real loopback sockets.
"""

from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import ISSLTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase, TestCase
from zope.interface import implementer

from knocker.console.site import (
    BUSY_SECONDS,
    MAX_AHEAD,
    MAX_BODY,
    MAX_CONNECTIONS,
    MAX_FIELDS,
    MAX_PATH_PARTS,
    MAX_PER_SOURCE,
    REQUEST_SECONDS,
    BoundedRequest,
    ConnectionLimit,
    QuietSite,
)
from tests.console.web import ConsoleFixture

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
FORM = (b"Host: 127.0.0.1:8750\r\nOrigin: http://127.0.0.1:8750\r\n"
        b"Content-Type: application/x-www-form-urlencoded\r\n")


@implementer(ISSLTransport)
class TLSTransport(StringTransport):
    """
    What a C{ssl:} endpoint's connection says it is.
    """

    def getPeerCertificate(self):
        return None

    def setTcpNoDelay(self, enabled):
        pass


class Hanging(StringTransport):
    """
    A connection whose closing waits on its client (a TLS handshake never
    finished): only an abort ends it.
    """

    aborted = False

    def abortConnection(self):
        self.aborted = True


def console_factory(testcase, limit=50):
    """
    The console's L{ConnectionLimit}, keeping each request in its
    C{requests} for a test to look into.
    """
    fixture = ConsoleFixture(testcase)
    requests = []

    class KeptRequest(BoundedRequest):
        def gotLength(self, length):
            requests.append(self)
            super().gotLength(length)

    site = QuietSite(fixture.console, reactor=fixture.h.clock)
    site.requestFactory = KeptRequest
    factory = ConnectionLimit(site, limit)
    factory.requests = requests
    return fixture, factory


def one_turn(clock):
    """
    One turn of a real reactor on C{clock}: the calls due now run, and
    those they schedule for now wait for the next turn (Clock.advance
    would run them too).
    """
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)


def connect(factory, transport=None):
    """
    A new connection to C{factory}: its protocol and transport.
    """
    protocol = factory.buildProtocol(PEER)
    transport = transport or StringTransport(peerAddress=PEER)
    protocol.makeConnection(transport)
    return protocol, transport


class BodyLimitTests(SynchronousTestCase):
    def test_a_big_content_length_is_refused_before_the_body(self):
        f, factory = console_factory(self)
        before = f.state()
        connection, transport = connect(factory)
        connection.dataReceived(b"POST /lift HTTP/1.1\r\n" + FORM +
                                b"Content-Length: 104857600\r\n\r\n" + b"a=1&" * 65536)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "), transport.value())
        self.assertIn(b"connection: close", transport.value())
        self.assertTrue(transport.disconnecting)
        [request] = factory.requests
        self.assertEqual(request.content.getvalue(), b"", "none of the body is kept")
        connection.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1, "the gate never answered")
        self.assertEqual(f.state(), before)

    def test_no_continue_after_the_refusal(self):
        f, factory = console_factory(self)
        connection, transport = connect(factory)
        connection.dataReceived(b"POST /login HTTP/1.1\r\n" + FORM + b"Expect: 100-continue\r\n"
                                b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertNotIn(b"100 Continue", transport.value())

    def test_a_chunked_body_is_cut_off_at_the_limit(self):
        f, factory = console_factory(self)
        connection, transport = connect(factory)
        connection.dataReceived(b"POST /login HTTP/1.1\r\n" + FORM +
                                b"Transfer-Encoding: chunked\r\n\r\n")
        size = MAX_BODY // 4
        chunk = b"%x\r\n%s\r\n" % (size, b"a" * size)
        for _ in range(4):
            connection.dataReceived(chunk)
        self.assertEqual(transport.value(), b"", "up to the limit it is read")
        connection.dataReceived(chunk + chunk + b"0\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 "))
        self.assertTrue(transport.disconnecting)
        self.assertLessEqual(len(factory.requests[0].content.getvalue()), MAX_BODY)
        self.assertEqual(transport.value().count(b"HTTP/1.1 "), 1, "never rendered")

    def test_a_login_form_still_works(self):
        f, factory = console_factory(self)
        token = f.credentials.new_login(f.wall.seconds()).encode()
        connection, transport = connect(factory)
        body = b"token=" + token
        connection.dataReceived(b"POST /login HTTP/1.1\r\n" + FORM +
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 302 "), transport.value())
        self.assertIn(b"knocker_session_8750=", transport.value())
        self.assertNotIn(b"Secure", transport.value())


def logged_in(f, factory):
    """
    A connection that has shown C{f.browser}'s session (log it in first):
    its transport never closes unless aborted, as under TLS.
    """
    cookie = "; ".join(f"{k}={v}" for k, v in f.browser.cookies.items()).encode()
    protocol, transport = connect(factory, Hanging(peerAddress=PEER))
    protocol.dataReceived(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8750\r\nCookie: " + cookie
                          + b"\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:80]
    return protocol, transport


def anonymous(factory):
    """A connection that asked for the login page, as anyone may."""
    protocol, transport = connect(factory, Hanging(peerAddress=PEER))
    protocol.dataReceived(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:80]
    return protocol, transport


class ConnectionLimitTests(SynchronousTestCase):
    def test_past_the_limit_of_logged_in_connections_a_new_one_is_turned_away(self):
        f, factory = console_factory(self, limit=3)
        f.login()
        held = [logged_in(f, factory) for _ in range(3)]
        extra, transport = connect(factory)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "), transport.value())
        self.assertTrue(transport.disconnecting)
        extra.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(connect(factory)[1].disconnecting, "a refused one freed nothing")
        self.assertFalse(any(t.aborted for _, t in held), "a logged-in one was cut")
        held[0][0].connectionLost(Failure(ConnectionDone()))
        again, transport = connect(factory)
        again.dataReceived(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value())

    def test_the_oldest_connection_without_a_session_makes_room(self):
        """
        Anyone can hold connections open with requests for the login page;
        the operator's browser still gets in, and no logged-in connection
        is cut for it.
        """
        f, factory = console_factory(self, limit=3)
        f.login()
        operator = logged_in(f, factory)
        first, second = anonymous(factory), anonymous(factory)
        newest = anonymous(factory)
        self.assertEqual([t.aborted for _, t in (operator, first, second)],
                         [False, True, False])
        anonymous(factory)
        self.assertEqual([t.aborted for _, t in (operator, second, newest)],
                         [False, True, False])
        first[0].connectionLost(Failure(ConnectionDone()))  # the cut ones go
        second[0].connectionLost(Failure(ConnectionDone()))
        anonymous(factory)
        self.assertEqual([t.aborted for _, t in (operator, newest)], [False, True])

    def test_turned_away_connections_past_max_busy_are_cut_unanswered(self):
        """
        Under TLS a turned-away connection's answer waits for a handshake a
        flood never makes: at most C{max_busy} wait at once, holding a
        descriptor each.
        """
        f, factory = console_factory(self, limit=1)
        factory.max_busy = 2
        f.login()
        logged_in(f, factory)
        waiting = [connect(factory, Hanging(peerAddress=PEER)) for _ in range(2)]
        for _, transport in waiting:
            self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
            self.assertFalse(transport.aborted)
        _, cut = connect(factory, Hanging(peerAddress=PEER))
        self.assertEqual((cut.aborted, cut.value()), (True, b""))
        waiting[0][0].connectionLost(Failure(ConnectionDone()))
        _, transport = connect(factory, Hanging(peerAddress=PEER))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertFalse(transport.aborted)

    def test_a_turned_away_connection_that_does_not_close_is_cut(self):
        f, factory = console_factory(self, limit=1)
        f.login()
        logged_in(f, factory)
        timers = list(f.h.clock.getDelayedCalls())
        closes, transport = connect(factory, Hanging(peerAddress=PEER))
        closes.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(f.h.clock.getDelayedCalls(), timers, "closed: no timer left")
        _, transport = connect(factory, Hanging(peerAddress=PEER))
        f.h.clock.advance(BUSY_SECONDS)
        self.assertTrue(transport.aborted)

    def test_tls_stays_secure_through_the_limit(self):
        f, factory = console_factory(self)
        token = f.credentials.new_login(f.wall.seconds()).encode()
        connection, transport = connect(factory, TLSTransport(peerAddress=PEER))
        body = b"token=" + token
        connection.dataReceived(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n"
                                b"Origin: https://127.0.0.1:8750\r\n"
                                b"Content-Type: application/x-www-form-urlencoded\r\n"
                                b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 302 "), transport.value())
        self.assertIn(b"; Secure", transport.value())

    def test_live_events_through_the_limit(self):
        f, factory = console_factory(self)
        f.login()
        cookie = "; ".join(f"{k}={v}" for k, v in f.browser.cookies.items()).encode()
        connection, transport = connect(factory)
        connection.dataReceived(b"GET /events HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n"
                                b"Cookie: " + cookie + b"\r\n\r\n")
        f.audit.record("lockout", source="203.0.113.7", reason="typo")
        self.assertIn(b"text/event-stream", transport.value())
        self.assertIn(b'"source": "203.0.113.7"', transport.value())


class ParseCostTests(SynchronousTestCase):
    """
    What twisted.web would split on the reactor before the gate (a query, a
    form, a path) is refused unparsed past a few dozen pieces, from anyone.
    """

    def setUp(self):
        import twisted.web.http as http

        self.parsed = []
        real = http.parse_qs

        def counted(data, *args):
            self.parsed.append(len(data))
            return real(data, *args)

        self.patch(http, "parse_qs", counted)
        self.f, self.factory = console_factory(self)

    def answer(self, data: bytes) -> bytes:
        connection, transport = connect(self.factory)
        connection.dataReceived(data)
        return transport.value()

    def post(self, body: bytes, kind: bytes = b"application/x-www-form-urlencoded") -> bytes:
        return self.answer(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n"
                           b"Origin: http://127.0.0.1:8750\r\nContent-Type: " + kind +
                           b"\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def test_a_query_of_many_fields_is_refused_unparsed(self):
        answer = self.answer(b"GET /login?" + b";" * 4000 + b" HTTP/1.1\r\n"
                             b"Host: 127.0.0.1:8750\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:80])
        self.assertIn(b"a query of more than %d fields" % MAX_FIELDS, answer)
        self.assertEqual(self.parsed, [])

    def test_a_form_of_many_fields_is_refused_unparsed(self):
        answer = self.post(b"a=1&" * 1000)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:80])
        self.assertIn(b"a form of more than %d fields" % MAX_FIELDS, answer)
        self.assertEqual(self.parsed, [])

    def test_a_body_that_is_not_a_form_is_refused_unparsed(self):
        body = b"--x\r\nContent-Disposition: form-data; name=token\r\n\r\nabc\r\n--x--\r\n"
        answer = self.post(body, b"multipart/form-data; boundary=x")
        self.assertTrue(answer.startswith(b"HTTP/1.1 415 "), answer[:80])
        self.assertIn(b"application/x-www-form-urlencoded", answer)

    def test_a_path_of_many_parts_is_refused(self):
        answer = self.answer(b"GET " + b"/" * 2000 + b" HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer[:80])
        self.assertIn(b"a path of more than %d parts" % MAX_PATH_PARTS, answer)

    def test_up_to_the_limits_a_request_is_served(self):
        query = b"&".join(b"f%d=1" % n for n in range(MAX_FIELDS))
        answer = self.answer(b"GET /login?" + query + b" HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 200 "), answer[:80])
        answer = self.post(query)  # a wrong login: the form was read, and judged
        self.assertTrue(answer.startswith(b"HTTP/1.1 403 "), answer[:80])
        self.assertEqual(len(self.parsed), 2)

    def test_every_connection_with_the_costliest_request_is_refused_unparsed(self):
        """
        The console's every connection at once (from several addresses),
        each with a body of empty fields as big as the limit allows, as one
        turn of the reactor would deliver them: all refused, none parsed.
        """
        body = b";" * (MAX_BODY - 10)
        request = (b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n"
                   b"Content-Type: application/x-www-form-urlencoded\r\n"
                   b"Content-Length: %d\r\n\r\n" % len(body)) + body
        answers = []
        for n in range(MAX_CONNECTIONS):
            peer = IPv4Address("TCP", f"127.0.0.{2 + n // MAX_PER_SOURCE}", 40000 + n)
            connection, transport = connect_from(self.factory, peer)
            connection.dataReceived(request)
            answers.append(transport.value()[:12])
        self.assertEqual(set(answers), {b"HTTP/1.1 400"})
        self.assertEqual(self.parsed, [])


def connect_from(factory, peer):
    protocol = factory.buildProtocol(peer)
    transport = StringTransport(peerAddress=peer)
    protocol.makeConnection(transport)
    return protocol, transport


class BadRequestTests(SynchronousTestCase):
    """
    What twisted.web cannot read gets a 400 that says what it was (Twisted's
    own is a bare status line), the connection closes, and the console
    goes on serving.
    """

    def answer(self, data: bytes) -> bytes:
        f, factory = console_factory(self)
        connection, transport = connect(factory)
        connection.dataReceived(data)
        self.assertTrue(transport.disconnecting)
        again, transport2 = connect(factory)
        again.dataReceived(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n")
        self.assertTrue(transport2.value().startswith(b"HTTP/1.1 200 "), "still serving")
        return transport.value()

    def assertBad(self, data: bytes, reason: bytes) -> None:
        answer = self.answer(data)
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:80])
        head, _, body = answer.partition(b"\r\n\r\n")
        self.assertIn(b"content-length: %d" % len(body), head)
        self.assertEqual(body, b"bad request: " + reason + b"\n")

    def test_a_request_line_that_is_not_http(self):
        self.assertBad(b"HELLO\r\n\r\n", b"not an HTTP/1.x request line: 'HELLO'")

    def test_a_header_without_a_colon(self):
        self.assertBad(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\nno colon here\r\n"
                       b"Accept: */*\r\n\r\n",
                       b"a header that cannot be read: 'no colon here'")

    def test_the_last_header_is_named_too(self):
        self.assertBad(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n"
                       b"Content-Length: many\r\n\r\n",
                       b"a header that cannot be read: 'Content-Length: many'")

    def test_a_folded_header_is_named_by_its_first_line(self):
        self.assertBad(b"GET / HTTP/1.1\r\nBad Name: x\r\n  folded\r\n\r\n",
                       b"a header that cannot be read: 'Bad Name: x'")

    def test_a_line_out_of_ascii_is_shown_escaped_and_cut(self):
        self.assertBad(b"\xff" * 100 + b"\r\n\r\n",
                       b"not an HTTP/1.x request line: '" + b"\\xff" * 20 + b"...'")

    def test_too_many_headers(self):
        headers = b"".join(b"X-%d: y\r\n" % n for n in range(600))
        answer = self.answer(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
        self.assertIn(b"bad request: more than ", answer)

    def test_a_broken_chunked_body(self):
        self.assertBad(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n"
                       b"Transfer-Encoding: chunked\r\n\r\nzz\r\n",
                       b"a body that cannot be read (its chunks, or its form)")

    def test_a_second_empty_line_before_a_request_is_its_request_line(self):
        self.assertBad(b"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
                       b"not an HTTP/1.x request line: ''")

    def test_a_folded_line_right_after_the_request_line_is_named(self):
        self.assertBad(b"GET / HTTP/1.1\r\n x: y\r\nHost: 127.0.0.1:8750\r\n\r\n",
                       b"a header that cannot be read: ' x: y'")

    def test_after_the_answer_nothing_is_read_and_a_waiting_close_is_cut(self):
        """
        Under TLS the close waits for the peer, whose bytes would reset the
        idle timeout: the connection is cut BUSY_SECONDS after the 400 (or
        the 431) however it trickles, and what it sends is not read.
        """
        for start in (b"HELLO\r\n", b"GET /?" + b"a" * 17000):
            f, factory = console_factory(self)
            connection, transport = connect(factory, Hanging(peerAddress=PEER))
            connection.dataReceived(start)
            answered = transport.value()
            self.assertTrue(answered.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 431 ")), answered)
            for _ in range(BUSY_SECONDS - 1):
                f.h.clock.advance(1)
                connection.dataReceived(b"GET / HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n")
            self.assertFalse(transport.aborted)
            self.assertEqual(transport.value(), answered, "nothing more read or answered")
            f.h.clock.advance(1)
            self.assertTrue(transport.aborted, start[:10])


class SlowClientTests(SynchronousTestCase):
    """
    Connections that send slowly, or too much on one line, give their place
    back at once or within REQUEST_SECONDS, and no address takes them all.
    """

    def test_an_over_long_line_is_answered_431_and_closed_at_once(self):
        f, factory = console_factory(self)
        connection, transport = connect(factory, TLSTransport(peerAddress=PEER))
        connection.dataReceived(b"GET /login?x=" + b"a" * 17000 + b" HTTP/1.1\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 431 "), transport.value()[:80])
        self.assertTrue(transport.disconnecting)

    def assertCutWhileDripping(self, start: bytes, drip: bytes) -> None:
        """
        C{start}, then C{drip} once a second (each byte resets the idle
        timeout): the connection is cut REQUEST_SECONDS after it opened.
        """
        f, factory = console_factory(self)
        connection, transport = connect(factory, Hanging(peerAddress=PEER))
        connection.dataReceived(start)
        for _ in range(REQUEST_SECONDS - 1):
            f.h.clock.advance(1)
            connection.dataReceived(drip)
        self.assertFalse(transport.aborted)
        f.h.clock.advance(1)
        self.assertTrue(transport.aborted, "the request was not all there in time")

    def test_a_head_that_drips_in_is_cut_after_head_seconds(self):
        self.assertCutWhileDripping(b"GET /login HTTP/1.1\r\n", b"X")

    def test_a_whole_head_in_time_is_served_and_the_next_gets_its_own_time(self):
        f, factory = console_factory(self)
        connection, transport = connect(factory, Hanging(peerAddress=PEER))
        f.h.clock.advance(REQUEST_SECONDS - 1)
        connection.dataReceived(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 "), transport.value()[:80])
        f.h.clock.advance(REQUEST_SECONDS - 1)
        self.assertFalse(transport.aborted)
        f.h.clock.advance(1)
        self.assertTrue(transport.aborted, "an idle kept-alive connection waits no longer")

    def test_a_body_that_drips_in_is_cut_too(self):
        self.assertCutWhileDripping(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n"
                                    b"Content-Length: %d\r\n\r\n" % MAX_BODY, b"a")

    def test_a_pipelined_live_stream_is_not_cut(self):
        f, factory = console_factory(self)
        f.login()
        cookie = "; ".join(f"{k}={v}" for k, v in f.browser.cookies.items()).encode()
        connection, transport = connect(factory, Hanging(peerAddress=PEER))
        connection.dataReceived(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n"
                                b"GET /events HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n"
                                b"Cookie: " + cookie + b"\r\n\r\n")
        f.h.clock.advance(0)  # the pipelined request: on the next turn
        self.assertIn(b"text/event-stream", transport.value())
        f.h.clock.advance(REQUEST_SECONDS * 3)
        self.assertFalse(transport.aborted, "the stream was in progress")

    def test_pipelined_requests_are_answered_one_a_turn(self):
        """
        Requests sent ahead on one connection (no login needed: each gets
        its 401) are answered one a reactor turn, and nothing more is read
        meanwhile: 64 kB of them no longer hold the reactor, and every
        knock, for the time of 1,300 answers.
        """
        f, factory = console_factory(self)
        connection, transport = connect(factory)
        request = b"GET /clients HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n"
        sent = MAX_AHEAD + 1  # the first, and as many ahead of it as are allowed
        connection.dataReceived(request * sent)
        answers = lambda: transport.value().count(b"HTTP/1.1 ")  # noqa: E731
        self.assertEqual(answers(), 1)
        self.assertEqual(transport.producerState, "paused")
        one_turn(f.h.clock)
        self.assertEqual(answers(), 2)
        for _ in range(sent - 2):
            one_turn(f.h.clock)
        self.assertEqual(answers(), sent, "every one answered, in turn")
        self.assertEqual(transport.value().count(b"HTTP/1.1 401 "), sent)
        one_turn(f.h.clock)
        self.assertEqual(transport.producerState, "producing", "reading again once done")
        self.assertFalse(transport.disconnecting)
        connection.dataReceived(request * sent)  # a second burst, after a pause: as many again
        for _ in range(sent):
            one_turn(f.h.clock)
        self.assertEqual(answers(), 2 * sent)
        self.assertFalse(transport.disconnecting)

    def test_a_client_that_reads_slowly_has_all_its_requests_ahead_answered(self):
        """Each request is counted once, however often the transport backs up."""
        f, factory = console_factory(self)
        connection, transport = connect(factory, Hanging(peerAddress=PEER))
        channel = connection.wrappedProtocol
        connection.dataReceived(b"GET / HTTP/1.1\r\n\r\n" * (MAX_AHEAD + 1))
        for _ in range(3 * MAX_AHEAD):
            channel.pauseProducing()  # its buffer full after each answer...
            one_turn(f.h.clock)
            channel.resumeProducing()  # ...and read a turn later
            one_turn(f.h.clock)
        self.assertEqual(transport.value().count(b"HTTP/1.1 401 "), MAX_AHEAD + 1)
        self.assertNotIn(b"HTTP/1.1 400 ", transport.value())

    def test_more_requests_ahead_than_allowed_are_refused(self):
        f, factory = console_factory(self)
        connection, transport = connect(factory)
        connection.dataReceived(b"GET / HTTP/1.1\r\n\r\n" * 1000)
        for _ in range(MAX_AHEAD + 5):
            one_turn(f.h.clock)
        self.assertEqual(transport.value().count(b"HTTP/1.1 401 "), MAX_AHEAD + 1)
        self.assertIn(b"HTTP/1.1 400 ", transport.value())
        self.assertIn(f"more than {MAX_AHEAD} requests sent ahead".encode(), transport.value())
        self.assertTrue(transport.disconnecting)

    def test_a_client_that_reads_nothing_gets_no_more_answers(self):
        """
        Requests sent ahead by a client that reads none of its answers: once
        the transport is backed up, not one more is answered (each would
        sit in memory, some kB a page) until the client reads, and then
        the rest are, one a turn.  Meanwhile the idle timer cuts it.
        """
        f, factory = console_factory(self)
        connection, transport = connect(factory, Hanging(peerAddress=PEER))
        channel = connection.wrappedProtocol
        connection.dataReceived(b"GET / HTTP/1.1\r\n\r\n" * 20)
        answers = lambda: transport.value().count(b"HTTP/1.1 401 ")  # noqa: E731
        self.assertEqual(answers(), 1)
        channel.pauseProducing()  # what a full write buffer makes the transport do
        for _ in range(50):
            one_turn(f.h.clock)
        self.assertEqual(answers(), 1, "answers written while the client reads nothing")
        channel.resumeProducing()  # it read them
        for _ in range(9):
            one_turn(f.h.clock)
        self.assertEqual(answers(), 10, "the rest, one a turn, once it reads")
        channel.pauseProducing()
        f.h.clock.advance(REQUEST_SECONDS)
        self.assertTrue(transport.aborted, "cut when it stops reading again")

    def test_an_ipv6_host_counts_by_its_64(self):
        f, factory = console_factory(self, limit=50)
        held = []
        for n in range(MAX_PER_SOURCE):
            peer = IPv6Address("TCP", f"2001:db8::{n + 1:x}", 40000)
            held.append(Hanging(peerAddress=peer))
            factory.buildProtocol(peer).makeConnection(held[-1])
        other = IPv6Address("TCP", "2001:db8::ffff", 40000)
        transport = Hanging(peerAddress=other)
        factory.buildProtocol(other).makeConnection(transport)
        self.assertEqual([t.aborted for t in held[:2]], [True, False], "the /64's oldest cut")
        self.assertFalse(transport.aborted or transport.disconnecting)

    def test_ipv4_clients_of_a_console_on_ipv6_count_apart(self):
        """On ::, an IPv4 client comes as ::ffff:a.b.c.d: not one /64 for all."""
        f, factory = console_factory(self, limit=50)
        for n in range(MAX_PER_SOURCE):
            peer = IPv6Address("TCP", "::ffff:198.51.100.1", 40000 + n)
            factory.buildProtocol(peer).makeConnection(StringTransport(peerAddress=peer))
        other = IPv6Address("TCP", "::ffff:198.51.100.2", 40000)
        transport = StringTransport(peerAddress=other)
        factory.buildProtocol(other).makeConnection(transport)
        self.assertFalse(transport.value().startswith(b"HTTP/1.1 503 "), transport.value())

    def test_one_address_cannot_take_every_connection(self):
        """
        An address holds at most C{MAX_PER_SOURCE}: past that its own oldest
        connection without a session makes room (on a console behind an SSH
        tunnel every connection is 127.0.0.1's, the operator's too), or,
        when all of them have shown one, the new one is turned away.  The
        other addresses keep their share.
        """
        f, factory = console_factory(self, limit=50)
        held = [anonymous(factory) for _ in range(MAX_PER_SOURCE)]
        newest = anonymous(factory)
        self.assertEqual([t.aborted for _, t in held[:2]], [True, False])
        held[0][0].connectionLost(Failure(ConnectionDone()))
        self.assertFalse(newest[1].aborted)
        other = IPv4Address("TCP", "198.51.100.7", 40000)
        served = factory.buildProtocol(other)
        t = StringTransport(peerAddress=other)
        served.makeConnection(t)
        served.dataReceived(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1:8750\r\n\r\n")
        self.assertTrue(t.value().startswith(b"HTTP/1.1 200 "), t.value()[:80])

    def test_an_address_whose_connections_all_showed_a_session_is_turned_away(self):
        f, factory = console_factory(self, limit=50)
        f.login()
        held = [logged_in(f, factory) for _ in range(MAX_PER_SOURCE)]
        _, transport = connect(factory)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "), transport.value())
        self.assertFalse(any(t.aborted for _, t in held))


class Reader(Protocol):
    """
    A client that keeps what it is sent; C{done} fires with it when the
    server closes.
    """

    def __init__(self):
        self.received = b""
        self.done = Deferred()

    def dataReceived(self, data):
        self.received += data

    def connectionLost(self, reason):
        self.done.callback(self.received)


class LoopbackTests(TestCase):
    """
    The same on real sockets, on the real reactor.
    """

    timeout = 30

    async def test_body_and_connection_limits_on_a_real_port(self):
        f, factory = console_factory(self, limit=2)
        factory.wrappedFactory.reactor = reactor
        port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        client = TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port)

        async def connection(data: bytes = b"") -> Reader:
            reader = await client.connect(Factory.forProtocol(Reader))
            reader.transport.write(data)
            return reader

        big = await connection(b"POST /lift HTTP/1.1\r\n" + FORM +
                               b"Content-Length: 104857600\r\n\r\n")
        self.assertTrue((await big.done).startswith(b"HTTP/1.1 413 "))

        # Two connections held by someone without a session: a third comes,
        # the oldest is cut and the third served.
        held = [await connection(b"GET /login HTTP/1.1\r\n") for _ in range(2)]
        served = await connection(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                  b"Connection: close\r\n\r\n")
        self.assertTrue((await served.done).startswith(b"HTTP/1.1 200 "))
        self.assertEqual(await held[0].done, b"")
        self.assertFalse(held[1].done.called)
        held[1].transport.loseConnection()
        await held[1].done
