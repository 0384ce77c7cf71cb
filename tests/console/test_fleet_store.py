"""
The console on a fleet's gateway, whose store answers later and must not be
read on the reactor (L{knocker.daemon.fleet.ThreadedStore}): every page,
/metrics and the API read the state through C{store.read} and answer once
it has; lifting and revoking answer once the state has the change; a
state that does not answer is a 503, not a page of nothing.
"""

from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import SynchronousTestCase

from knocker.core.tracker import GLOBAL
from knocker.state.interface import StateError
from tests.console.web import ConsoleFixture

BAD_SECRET = b"\x01" * 32


class ThreadedLike:
    """
    The harness's store seen as a ThreadedStore: C{read}, C{client},
    C{revoke} and C{lift_lockouts} answer through L{Deferred}s (held until
    L{release} with C{held}); the reads that would block (C{clients},
    C{pool}, C{pending_closes}) fail the test if the reactor makes them.
    """

    def __init__(self, store):
        self._store = store
        self.held = False
        self.broken = False
        self.waiting: list[tuple[Deferred, object]] = []

    def __getattr__(self, name):
        return getattr(self._store, name)

    def _later(self, work):
        if self.broken:
            return fail(StateError("the database is gone"))
        if not self.held:
            return succeed(work())
        d = Deferred()
        self.waiting.append((d, work))
        return d

    def release(self, *_):
        while self.waiting:
            d, work = self.waiting.pop(0)
            d.callback(work())

    def read(self, function):
        return self._later(lambda: function(self._store))

    def client(self, client):
        return self._later(lambda: self._store.client(client))

    def revoke(self, client):
        return self._later(lambda: self._store.revoke(client))

    def lift_lockouts(self, key=None):
        return self._later(lambda: self._store.lift_lockouts(key))

    def _on_the_reactor(self, *args):
        raise AssertionError("a blocking read of the database on the reactor")

    clients = pool = pending_closes = _on_the_reactor


def audit_events(f, event: str) -> list[dict]:
    return [e for e in f.h.audit.events if e["event"] == event]


def fleet_console(case, **config) -> tuple[ConsoleFixture, ThreadedLike]:
    f = ConsoleFixture(case, **config)
    later = ThreadedLike(f.h.store)
    f.h.server._store = later
    return f, later


class FleetConsoleTests(SynchronousTestCase):

    def test_pages_read_off_the_reactor(self):
        f, later = fleet_console(self)
        f.login()
        later.held = True
        answers = []

        def settle(channel):
            answers.append(channel.transport.written.getvalue())
            later.release()

        f.browser.settle = settle
        for path, shown in (("/", b"Up since"), ("/clients", b"alice"),
                            ("/metrics", b"knocker_pending_closes 0.0"),
                            ("/api/status", b'"client": "alice"')):
            response = f.browser.get(path)
            self.assertEqual(answers[-1], b"", f"{path}: nothing before the state answered")
            self.assertEqual(response.code, 200, path)
            self.assertIn(shown, response.body, path)
        self.assertIn(b'knocker_knocks_left{client="bob"} 5.0', f.browser.get("/metrics").body)

    def test_state_gone_is_503(self):
        f, later = fleet_console(self)
        f.login()
        later.broken = True
        response = f.browser.get("/clients")
        self.assertEqual(response.code, 503)
        self.assertIn(b"the state did not answer", response.body)

    def test_revoke_answers_once_the_state_has_it(self):
        f, later = fleet_console(self)
        csrf = f.login()
        later.held = True
        written = []
        f.browser.settle = lambda channel: (written.append(channel.transport.written.getvalue()),
                                            later.release())
        response = f.browser.post("/revoke", {"client": "alice", "csrf": csrf})
        self.assertEqual(written, [b""])
        self.assertEqual(response.code, 302)
        self.assertEqual(list(f.h.store.revoked()), ["alice"])
        self.assertTrue(f.h.server.is_revoked(f.h.store.client("alice")))
        self.assertEqual(audit_events(f, "admin-revoke")[0]["client"], "alice")
        later.held = False
        response = f.browser.post("/revoke", {"client": "nobody", "csrf": csrf})
        self.assertEqual(response.code, 404)

    def test_lift_answers_once_the_state_has_it(self):
        f, later = fleet_console(self, lockout=600)
        f.h.handshake(secret=BAD_SECRET, ip="198.51.100.1")
        f.h.server.save_lockouts()
        f.h.store.set_lockout(GLOBAL, 1e12)
        csrf = f.login()
        later.held = True
        f.browser.settle = later.release
        response = f.browser.post("/lift", {"source": "all", "csrf": csrf})
        self.assertEqual(response.code, 302)
        self.assertEqual(f.h.server.tracker.lockouts(), {})
        self.assertEqual(f.h.store.lockouts(0), {})
        self.assertEqual(audit_events(f, "admin-lift")[0]["lifted"], ["198.51.100.1"])

    def test_lift_refused_by_the_state_is_503(self):
        f, later = fleet_console(self, lockout=600)
        f.h.handshake(secret=BAD_SECRET, ip="198.51.100.1")
        csrf = f.login()
        later.broken = True
        response = f.browser.post("/lift", {"source": "all", "csrf": csrf})
        self.assertEqual(response.code, 503)
        self.assertEqual(audit_events(f, "admin-lift"), [], "not done, not audited")
