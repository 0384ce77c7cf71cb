"""
Live events and metrics inside the daemon: a slow browser cannot hold the
daemon up, and /metrics counts what happens without an address in a label.
"""

import re

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.test.requesthelper import DummyRequest

from knocker.console.access import SESSION_SECONDS
from knocker.console.events import EventBus, EventStream
from tests.console.web import Browser, ConsoleFixture
from tests.helpers.harness import a_decoy


class StreamRequest(DummyRequest):
    """
    DummyRequest takes every producer for a pull producer; a stream is a
    push producer, registered as a real request registers it.
    """

    def registerProducer(self, producer, streaming):
        self.producer = (producer, streaming)

    def unregisterProducer(self):
        self.producer = None


class StreamTests(SynchronousTestCase):
    def test_events_reach_a_subscriber(self):
        bus = EventBus()
        request = StreamRequest([b"events"])
        EventStream(request, bus)
        bus.publish({"event": "open", "client": "alice"})
        self.assertIn(b'data: {"event": "open", "client": "alice"}\n\n', request.written)

    def test_a_stuck_subscriber_is_dropped(self):
        bus = EventBus()
        request = StreamRequest([b"events"])
        stream = EventStream(request, bus, limit=3)
        stream.pauseProducing()  # what Twisted does when the connection backs up
        for n in range(3):
            bus.publish({"event": "hit", "n": n})
        self.assertEqual(bus.subscribers, {stream})
        bus.publish({"event": "hit", "n": 3})
        self.assertEqual(bus.subscribers, set())
        self.assertEqual(request.finished, 1)
        self.assertEqual(bus.dropped, 1)

    def test_a_paused_subscriber_catches_up(self):
        bus = EventBus()
        request = StreamRequest([b"events"])
        stream = EventStream(request, bus, limit=3)
        stream.pauseProducing()
        bus.publish({"event": "a"})
        written = len(request.written)
        stream.resumeProducing()
        self.assertEqual(len(request.written), written + 1)

    def test_a_flood_goes_live_at_a_bounded_rate(self):
        from twisted.internet.task import Clock

        clock = Clock()
        bus = EventBus(clock, rate=10)
        request = StreamRequest([b"events"])
        EventStream(request, bus)
        for n in range(1000):
            bus.publish({"event": "lockout", "n": n})
        self.assertEqual(len(request.written), 1 + 10)
        clock.advance(1)
        bus.publish({"event": "open"})
        self.assertIn(b'"event": "live-skipped", "count": 990', request.written[-2])
        self.assertIn(b'"open"', request.written[-1])

    def test_the_recent_buffer_is_bounded(self):
        bus = EventBus(recent=5)
        for n in range(100):
            bus.publish({"event": "x", "n": n})
        self.assertEqual([e["n"] for e in bus.recent], [95, 96, 97, 98, 99])


class StreamSessionTests(SynchronousTestCase):
    """
    A live page's stream lasts no longer than its session: the session is
    checked when the stream starts, and the stream must not outlive it.
    """

    def test_logout_ends_that_sessions_streams(self):
        f = ConsoleFixture(self)
        csrf = f.login()
        _, mine = f.browser.stream("/events")
        other = Browser(f.console)
        f.login(other)
        _, theirs = other.stream("/events")
        self.assertEqual(f.browser.post("/logout", {"csrf": csrf}).code, 302)
        self.assertTrue(mine.getvalue().endswith(b"0\r\n\r\n"), "ended")
        f.audit.record("lockout", source="203.0.113.7", reason="after-logout")
        self.assertNotIn(b"after-logout", mine.getvalue())
        self.assertIn(b"after-logout", theirs.getvalue())
        self.assertEqual(len(f.bus.subscribers), 1)

    def test_a_stream_ends_when_its_session_expires(self):
        f = ConsoleFixture(self)
        f.login()
        timers = list(f.h.clock.getDelayedCalls())
        _, stream = f.browser.stream("/events")
        f.h.clock.advance(SESSION_SECONDS - 1)
        f.audit.record("lockout", source="203.0.113.7", reason="before-expiry")
        self.assertIn(b"before-expiry", stream.getvalue())
        f.h.clock.advance(1)
        self.assertTrue(stream.getvalue().endswith(b"0\r\n\r\n"), "ended")
        f.audit.record("lockout", source="203.0.113.8", reason="after-expiry")
        self.assertNotIn(b"after-expiry", stream.getvalue())
        self.assertEqual(f.bus.subscribers, set())
        self.assertEqual(f.h.clock.getDelayedCalls(), timers, "no timer left behind")

    def test_a_session_ending_as_its_stream_starts_gets_none(self):
        """
        The session ends between the gate's look at it and the stream's
        (the sessions' clock read twice): no stream, rather than one no
        expiry or logout would ever end.
        """
        f = ConsoleFixture(self)
        f.login()
        self.patch(f.console.sessions, "expiry", lambda session: None)
        request, stream = f.browser.stream("/events")
        self.assertEqual(request.code, 401)
        self.assertEqual(f.bus.subscribers, set())

    def test_a_bearers_stream_ends_as_a_session_would(self):
        """
        A bearer token has no session to expire; its stream still ends
        after a session's time, so a token taken out of the tokens file
        does not stream on for ever.
        """
        f = ConsoleFixture(self)
        token = f.credentials.new_bearer()
        _, stream = Browser(f.console).stream(
            "/events", headers={"authorization": f"Bearer {token}"})
        f.h.clock.advance(SESSION_SECONDS - 1)
        f.audit.record("lockout", source="203.0.113.7", reason="before-the-end")
        self.assertIn(b"before-the-end", stream.getvalue())
        f.h.clock.advance(1)
        self.assertTrue(stream.getvalue().endswith(b"0\r\n\r\n"), "ended")
        self.assertEqual(f.bus.subscribers, set())

    def test_a_closed_stream_leaves_no_timer(self):
        f = ConsoleFixture(self)
        f.login()
        timers = list(f.h.clock.getDelayedCalls())
        request, _ = f.browser.stream("/events")
        self.assertEqual(len(f.h.clock.getDelayedCalls()), len(timers) + 1)
        request.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(f.bus.subscribers, set())
        self.assertEqual(f.h.clock.getDelayedCalls(), timers)


class MetricsTests(SynchronousTestCase):
    def scrape(self, f) -> str:
        return f.metrics.text().decode()

    def test_a_proof_the_server_cannot_answer_is_counted(self):
        """
        A client whose server copy became unreadable: each PROOF naming it
        is ERROR server-error, counted as a handshake error and shown live
        with its reason, through the console's side of the audit log.
        """
        import os

        f = ConsoleFixture(self)
        os.chmod(f.h.book.path("alice"), 0o644)
        f.h.book._headers.clear()
        line, *_ = f.h.handshake(secret=b"\x01" * 32, ip="203.0.113.9")
        self.assertEqual(line, b"ERROR server-error\n")
        self.assertIn('knocker_handshakes_total{result="error"} 1.0', self.scrape(f))
        self.assertEqual([(e["client"], e["reason"]) for e in f.bus.recent
                          if e["event"] == "error"],
                         [("alice", "client-file")])

    def test_counters_follow_the_daemon(self):
        f = ConsoleFixture(self, lockout=600)
        f.h.knock("alice")
        f.h.hit("198.51.100.7", a_decoy(f.h))
        f.h.handshake(secret=b"\x01" * 32, ip="203.0.113.9")
        text = self.scrape(f)
        self.assertIn('knocker_handshakes_total{result="grant"} 1.0', text)
        self.assertIn('knocker_handshakes_total{result="denied"} 1.0', text)
        self.assertIn('knocker_hits_total{outcome="progress"} 2.0', text)
        self.assertIn('knocker_hits_total{outcome="complete"} 1.0', text)
        self.assertIn('knocker_hits_total{outcome="no-slot"} 1.0', text)
        self.assertIn('knocker_lockouts_total{scope="source"} 2.0', text)
        self.assertIn("knocker_lockouts_in_force 2.0", text)
        self.assertIn('knocker_knocks_left{client="bob"} 5.0', text)
        self.assertIn("knocker_knock_duration_seconds_count 1.0", text)

    def test_no_address_in_any_label(self):
        f = ConsoleFixture(self, lockout=600)
        f.h.knock("alice")
        for n in range(20):
            f.h.hit(f"198.51.100.{n}", a_decoy(f.h))
        f.h.handshake(secret=b"\x01" * 32, ip="2001:db8::1")
        values = re.findall(r'="([^"]*)"', self.scrape(f))
        self.assertTrue(values)
        for value in values:
            self.assertNotRegex(value, r"\d+\.\d+\.\d+\.\d+|:.*:", value)

    def test_the_scrape_parses(self):
        from prometheus_client.parser import text_string_to_metric_families

        f = ConsoleFixture(self)
        f.h.knock("alice")
        families = {family.name: family for family in
                    text_string_to_metric_families(self.scrape(f))}
        left = {s.labels["client"]: s.value for s in families["knocker_knocks_left"].samples}
        self.assertEqual(left, {"alice": 4.0, "bob": 5.0})
        self.assertEqual(families["knocker_knocks_left"].type, "gauge")

    def test_names(self):
        f = ConsoleFixture(self)
        for line in self.scrape(f).splitlines():
            if line.startswith("# TYPE"):
                _, _, name, kind = line.split()
                self.assertTrue(name.startswith("knocker_"), name)
                if kind == "counter":
                    self.assertTrue(name.endswith("_total"), name)
                if kind == "histogram":
                    self.assertTrue(name.endswith("_seconds"), name)
