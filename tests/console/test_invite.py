"""
Invite on the clients page (docs/console.md): the daemon makes the client
in its own store and book, as C{knocker invite} does; the page shows the
code once, with the command that enrols; the code does enrol (the real
client's exchange on the daemon's central port, in memory); the
audit event names the client, never the code; an existing client is
replaced only when asked.  The gate's checks (login, CSRF, Origin, GET)
are in test_resource, which walks every route.
"""

import json
import re

from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from knocker.core.knockfile import parse_knockfile
from knocker.enrol.client import Outcome
from knocker.enrol.invite import invite_in
from tests.console.test_fleet_store import fleet_console
from tests.console.web import Browser, ConsoleFixture
from tests.helpers.harness import enroll

CODE = re.compile(r'<strong id="code">([0-9]+-[a-z]+-[a-z]+-[a-z]+)</strong>')


def invite(f, csrf, **fields):
    return f.browser.post("/invite", {"client": "carol", "csrf": csrf, **fields})


def shown_code(response) -> str:
    found = CODE.search(response.text)
    assert found, response.text
    return found.group(1)


class InviteTests(SynchronousTestCase):
    def setUp(self):
        self.f = ConsoleFixture(self, central="tcp:7123:interface=127.0.0.1")
        self.csrf = self.f.login()

    def test_the_code_shown_enrols(self):
        response = invite(self.f, self.csrf, knocks="7", expires="30m")
        self.assertEqual(response.code, 200, response.text)
        self.assertEqual(response.header(b"cache-control"), b"no-store")
        code = shown_code(response)
        self.assertIn(f"knocker enroll {code} --server tcp:127.0.0.1:7123", response.text)
        slot, words = code.split("-", 1)
        result = enroll(self.f.h, int(slot), words)
        self.assertIs(result.outcome, Outcome.ENROLLED, result.message())
        enrolled = parse_knockfile(result.text, "carol.knock")
        self.assertEqual((enrolled.client, len(enrolled.knocks)), ("carol", 7))
        # The daemon knocks it at once, no restart: the file enrolled is the one it serves.
        self.f.h.files["carol"] = enrolled
        grant, _ = self.f.h.knock("carol")
        self.assertEqual(grant.index, 1)
        again = enroll(self.f.h, int(slot), words)
        self.assertIs(again.outcome, Outcome.USED)

    def test_audited_without_the_code(self):
        code = shown_code(invite(self.f, self.csrf))
        event = self.f.h.audit.of("admin-invite")[-1]
        self.assertEqual((event["client"], event["by"], event["replaced"]),
                         ("carol", "session", False))
        self.assertEqual(event["slot"], int(code.split("-")[0]))
        words = code.split("-", 1)[1]
        for entry in self.f.h.audit.events:
            self.assertNotIn(words, json.dumps(entry))
            for word in words.split("-"):
                self.assertNotIn(word, json.dumps(entry))

    def test_clients_page_lists_open_invitations_without_words(self):
        code = shown_code(invite(self.f, self.csrf, expires="2h"))
        page = self.f.browser.get("/clients").text
        self.assertIn("Open invitations", page)
        self.assertIn("<td>carol</td>", page)
        self.assertIn("about 2 hours", page)
        self.assertIn("<td>3</td>", page, "tries left")
        self.assertNotIn(code.split("-", 1)[1], page)
        self.assertIn('action="/invite"', page)

    def test_existing_client_refused_unless_replace(self):
        alice = self.f.h.store.client("alice")
        response = invite(self.f, self.csrf, client="alice")
        self.assertEqual(response.code, 409)
        self.assertIn("exists already", response.text)
        self.assertIn("Replace", response.text)
        self.assertEqual(self.f.h.store.client("alice"), alice)
        self.assertEqual(self.f.h.store.invitations(), [])
        self.assertEqual(self.f.h.audit.of("admin-invite"), [])
        response = invite(self.f, self.csrf, client="alice", replace="yes")
        self.assertEqual(response.code, 200, response.text)
        self.assertNotEqual(self.f.h.store.client("alice").secret_id, alice.secret_id)
        line, *_ = self.f.h.handshake("alice")
        self.assertEqual(line, b"DENIED\n", "the old file stops working")
        self.assertTrue(self.f.h.audit.of("admin-invite")[-1]["replaced"])

    def test_bad_fields_refused(self):
        before = self.f.state()
        for fields in ({"client": "Carol!"}, {"client": ""}, {"knocks": "many"},
                       {"knocks": "0"}, {"expires": "soon"}, {"expires": "0"}):
            response = invite(self.f, self.csrf, **fields)
            self.assertEqual(response.code, 400, (fields, response.text))
            self.assertNotIn(b"--expires", response.body)
        self.assertEqual(self.f.state(), before)

    def test_bearer_gets_json(self):
        token = self.f.credentials.new_bearer()
        response = Browser(self.f.console).post(
            "/invite", {"client": "dave"}, origin=None,
            headers={"authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 200, response.text)
        text = response.text  # chunked: the answer came once the store had it
        answer = json.loads(text[text.index("{"):text.rindex("}") + 1])
        self.assertEqual(answer["client"], "dave")
        self.assertTrue(answer["command"].startswith(f"knocker enroll {answer['code']} "))


class FleetInviteTests(SynchronousTestCase):
    def test_invite_answers_once_the_state_has_it(self):
        f, later = fleet_console(self)
        def in_a_thread(*args):
            def work():  # as deferToThreadPool would: a raise is the Deferred's failure
                try:
                    return invite_in(f.h.store, f.h.book, *args)
                except ValueError:
                    return Failure()
            return later._later(work)
        later.invite = in_a_thread
        csrf = f.login()
        later.held = True
        written = []
        f.browser.settle = lambda channel: (written.append(channel.transport.written.getvalue()),
                                            later.release())
        response = invite(f, csrf)
        self.assertEqual(written, [b""], "nothing before the state answered")
        self.assertEqual(response.code, 200, response.text)
        shown_code(response)
        self.assertEqual([i.client for i in f.h.store.invitations()], ["carol"])
        response = invite(f, csrf)
        self.assertEqual(response.code, 409)


class EnrolEndpointTests(SynchronousTestCase):
    def test_the_command_names_this_daemons_central_port(self):
        from knocker.console.view import enrol_endpoint

        self.assertEqual(enrol_endpoint("tcp:7000:interface=127.0.0.1", "gw"),
                         "tcp:127.0.0.1:7000")
        self.assertEqual(enrol_endpoint("tcp:0:interface=127.0.0.1", "gw", 41234),
                         "tcp:127.0.0.1:41234", "where it listens")
        self.assertEqual(enrol_endpoint("tcp:7000", "gw.example"), "tcp:gw.example:7000")
        self.assertEqual(enrol_endpoint("tcp:port=7000:interface=0.0.0.0", "gw"), "tcp:gw:7000")
        # TLS: the client checks the certificate against what it puts in CERTS
        self.assertEqual(enrol_endpoint("ssl:7443:privateKey=k.pem:certKey=c.pem", "gw"),
                         "tls:gw:7443:trustRoots=CERTS")
        self.assertEqual(enrol_endpoint("tcp:7000:interface=2001\\:db8\\:\\:1", "gw"),
                         "tcp:2001\\:db8\\:\\:1:7000")
        # A machine that knows itself only as localhost: a place to fill in.
        self.assertEqual(enrol_endpoint("tcp:7000:interface=0.0.0.0", "localhost"),
                         "tcp:GATEWAY:7000")
        self.assertEqual(enrol_endpoint("tcp:7000", "localhost.localdomain"), "tcp:GATEWAY:7000")

    def test_the_page_says_what_to_put_in_place_of_certs(self):
        from knocker.console.pages import invited_page

        tls = invited_page("bob", "7-a-b-c", "knocker enroll 7-a-b-c --server "
                           "tls:gw:7443:trustRoots=CERTS", "2026-12-01 18:00", 9, "t").decode()
        self.assertIn("In place of CERTS", tls)
        self.assertIn("self-signed", tls)
        plain = invited_page("bob", "7-a-b-c", "knocker enroll 7-a-b-c --server tcp:gw:7000",
                             "2026-12-01 18:00", 9, "t").decode()
        self.assertNotIn("CERTS", plain)
