"""
Every route of the console through its one gate (docs/console.md, "Access"):
nothing without a login, no change without POST, a CSRF token and the
console's own Origin, and every change in the audit log.  The tests walk
L{ROUTES}, so a route added later is held to the same checks.
"""

import json
import os
from urllib.parse import urlencode

from twisted.trial.unittest import SynchronousTestCase

from knocker.console.access import SESSION_SECONDS
from knocker.console.resource import ROUTES
from tests.console.web import Browser, ConsoleFixture

BAD_SECRET = b"\x01" * 32

#: The fields of a valid change for each POST route behind the login; a new
#: POST route fails test_every_change_is_known until it is added here.
CHANGES = {
    "/lift": {"source": "198.51.100.1"},
    "/revoke": {"client": "alice"},
    "/invite": {"client": "carol", "knocks": "7", "expires": "30m"},
    "/logout": {},
}

PROTECTED = [route for route in ROUTES if not route.public]


def locked_out(fixture, ip="198.51.100.1"):
    fixture.h.handshake(secret=BAD_SECRET, ip=ip)
    assert ip in fixture.h.server.tracker.lockouts()


class RoutesTests(SynchronousTestCase):
    def test_every_change_is_known(self):
        posts = {route.path for route in PROTECTED if route.method == "POST"}
        self.assertEqual(posts, set(CHANGES))

    def test_only_login_is_public(self):
        self.assertEqual({(r.method, r.path) for r in ROUTES if r.public},
                         {("GET", "/login"), ("POST", "/login")})

    def test_every_route_has_its_handler(self):
        f = ConsoleFixture(self)
        for route in ROUTES:
            self.assertTrue(callable(getattr(f.console, "page_" + route.handler)), route)


class NoSessionTests(SynchronousTestCase):
    def test_every_route_refused_without_a_session(self):
        f = ConsoleFixture(self, lockout=600)
        locked_out(f)
        before = f.state()
        for route in PROTECTED:
            response = f.browser.request(route.method, route.path, CHANGES.get(route.path))
            self.assertEqual(response.code, 401, route)
            self.assertNotIn(b"alice", response.body, route)
        self.assertEqual(f.state(), before)

    def test_unknown_paths_say_nothing_without_a_session(self):
        f = ConsoleFixture(self)
        self.assertEqual(f.browser.get("/no-such-page").code, 401)
        f.login()
        self.assertEqual(f.browser.get("/no-such-page").code, 404)

    def test_a_forged_cookie_or_bearer_is_refused(self):
        f = ConsoleFixture(self)
        f.browser.cookies["knocker_session_8750"] = "x" * 43
        self.assertEqual(f.browser.get("/clients").code, 401)
        bearer = Browser(f.console)
        response = bearer.get("/metrics", headers={"authorization": "Bearer " + "y" * 43})
        self.assertEqual(response.code, 401)

    def test_a_session_expires(self):
        f = ConsoleFixture(self)
        f.login()
        self.assertEqual(f.browser.get("/clients").code, 200)
        f.h.clock.advance(SESSION_SECONDS + 1)
        self.assertEqual(f.browser.get("/clients").code, 401)


class CookieTests(SynchronousTestCase):
    def test_two_consoles_on_one_host_keep_their_own_sessions(self):
        """
        Two gateways' consoles tunnelled to 127.0.0.1:8750 and :8751: a
        browser keeps cookies by host name, not port, so logging in to
        the second must not log out of the first.
        """
        first, second = ConsoleFixture(self), ConsoleFixture(self)
        jar: dict[str, str] = {}
        one = Browser(first.console, host=b"127.0.0.1:8750", cookies=jar)
        two = Browser(second.console, host=b"127.0.0.1:8751", cookies=jar)
        first.login(one)
        second.login(two)
        self.assertEqual(sorted(jar), ["knocker_session_8750", "knocker_session_8751"])
        self.assertEqual((one.get("/").code, two.get("/").code), (200, 200))

    def test_the_cookie_name_follows_the_port_of_the_host_header(self):
        from knocker.console.access import cookie_name

        self.assertEqual([cookie_name(host) for host in (
            b"127.0.0.1:8750", b"[::1]:8751", b"gateway.example", b"[::1]", None,
            b"gateway.example:http", b"a:b:8750", b"x:123456")],
            [b"knocker_session_8750", b"knocker_session_8751"] + [b"knocker_session"] * 6)


class PostChecksTests(SynchronousTestCase):
    def setUp(self):
        self.f = ConsoleFixture(self, lockout=600)
        locked_out(self.f)
        self.csrf = self.f.login()
        self.before = self.f.state()

    def test_post_without_csrf_refused(self):
        for path, fields in CHANGES.items():
            response = self.f.browser.post(path, fields)
            self.assertEqual(response.code, 403, path)
            self.assertIn(b"CSRF", response.body)
        self.assertEqual(self.f.state(), self.before)
        self.assertEqual(self.f.browser.get("/clients").code, 200, "still logged in")

    def test_post_with_a_wrong_csrf_refused(self):
        for path, fields in CHANGES.items():
            response = self.f.browser.post(path, {**fields, "csrf": "z" * 43})
            self.assertEqual(response.code, 403, path)
        self.assertEqual(self.f.state(), self.before)

    def test_post_with_another_sessions_csrf_refused(self):
        """
        A token is its own session's: another browser's real one (say an
        attacker's own login) does not pass with this browser's cookie.
        """
        other = Browser(self.f.console)
        other_csrf = self.f.login(other)
        self.assertNotEqual(other_csrf, self.csrf)
        for path, fields in CHANGES.items():
            response = self.f.browser.post(path, {**fields, "csrf": other_csrf})
            self.assertEqual(response.code, 403, path)
            self.assertIn(b"CSRF", response.body)
        self.assertEqual(self.f.state(), self.before)

    def test_post_from_a_foreign_origin_refused(self):
        for origin in (b"http://evil.example", b"null", None):
            for path, fields in CHANGES.items():
                response = self.f.browser.post(path, {**fields, "csrf": self.csrf}, origin=origin)
                self.assertEqual(response.code, 403, (path, origin))
                self.assertIn(b"Origin", response.body)
        self.assertEqual(self.f.state(), self.before)

    def test_every_change_is_audited(self):
        for path, fields in CHANGES.items():
            count = len(self.f.h.audit.events)
            response = self.f.browser.post(path, {**fields, "csrf": self.csrf})
            # Invite answers with its code, shown once; the others redirect.
            self.assertEqual(response.code, 200 if path == "/invite" else 302,
                             (path, response.text))
            added = [e["event"] for e in self.f.h.audit.events[count:]]
            self.assertTrue(any(e.startswith("admin-") for e in added), (path, added))


class GetChangesNothingTests(SynchronousTestCase):
    def test_every_get_leaves_the_state_alone(self):
        f = ConsoleFixture(self, lockout=600)
        locked_out(f)
        f.login()
        before = f.state()
        for route in PROTECTED:
            if route.method == "GET":
                # even with a change's fields in the query
                query = "&".join(f"{k}={v}" for k, v in CHANGES.get("/revoke", {}).items())
                response = f.browser.get(f"{route.path}?{query}&source=all")
                self.assertEqual(response.code, 200, route)
        for path in CHANGES:
            response = f.browser.get(path)
            self.assertEqual(response.code, 405, path)
            self.assertEqual(response.header(b"allow"), b"POST", path)  # RFC 9110, 15.5.6
        self.assertEqual(f.state(), before)


class SecurityHeadersTests(SynchronousTestCase):
    """
    Every answer of the gate, page or refusal, logged in or not, forbids
    framing and sniffing, keeps its URL (a login token) out of Referers
    and out of caches, and runs no script but the page's own.
    """

    def assertGuarded(self, response, what):
        for name, value in ((b"x-frame-options", b"DENY"),
                            (b"x-content-type-options", b"nosniff"),
                            (b"referrer-policy", b"same-origin"),
                            (b"cache-control", b"no-store")):
            self.assertEqual(response.header(name), value, (what, name))
        policy = response.header(b"content-security-policy") or b""
        for directive in (b"default-src 'none'", b"frame-ancestors 'none'",
                          b"form-action 'self'"):
            self.assertIn(directive, policy, what)

    def test_every_route_and_refusal(self):
        f = ConsoleFixture(self, lockout=600)
        locked_out(f)
        for route in ROUTES:  # not logged in: the login, or 401
            self.assertGuarded(f.browser.request(route.method, route.path,
                                                 CHANGES.get(route.path)), route)
        self.assertGuarded(f.browser.get("/no-such-page"), "401 for an unknown path")
        csrf = f.login()
        self.assertGuarded(f.browser.get("/no-such-page"), "404")
        self.assertGuarded(f.browser.post("/lift", {"source": "198.51.100.1"}), "403, no CSRF")
        for route in PROTECTED:
            if route.method == "GET" and route.path != "/events":
                self.assertGuarded(f.browser.get(route.path), route)
        for path, fields in CHANGES.items():
            if path != "/logout":
                self.assertGuarded(f.browser.post(path, {**fields, "csrf": csrf}), path)
        self.assertGuarded(f.browser.post("/logout", {"csrf": csrf}), "/logout")


class HeadTests(SynchronousTestCase):
    """
    HEAD is GET without the body, under the same gate (RFC 9110 asks every
    server to take it where it takes GET).
    """

    def test_head_answers_as_get_without_the_body(self):
        f = ConsoleFixture(self)
        f.login()
        for route in PROTECTED:
            if route.method != "GET":
                continue
            got, head = f.browser.get(route.path), f.browser.request("HEAD", route.path)
            self.assertEqual((head.code, head.body), (got.code, b""), route)
            self.assertEqual(head.header(b"content-type"), got.header(b"content-type"), route)

    def test_head_of_the_login_page_needs_no_session(self):
        f = ConsoleFixture(self)
        self.assertEqual(f.browser.request("HEAD", "/login").code, 200)
        self.assertEqual(f.browser.request("HEAD", "/clients").code, 401)

    def test_head_logs_no_login_token(self):
        """
        A link preview's HEAD of a login URL: the token stays out of the
        log (Twisted warns about a HEAD's body naming the URI).
        """
        from twisted.logger import formatEvent, globalLogPublisher

        f = ConsoleFixture(self)
        token = f.credentials.new_login(f.wall.seconds())
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        head = f.browser.request("HEAD", f"/login?token={token}")
        self.assertEqual(head.code, 200)
        self.assertEqual(int(head.header(b"content-length")),
                         len(f.browser.get(f"/login?token={token}").body))
        self.assertFalse([e for e in logged if token in formatEvent(e) + repr(e)])

    def test_a_get_route_refuses_post_naming_get_and_head(self):
        f = ConsoleFixture(self)
        f.login()
        response = f.browser.post("/clients", {"csrf": "x"})
        self.assertEqual(response.code, 405)
        self.assertEqual(response.header(b"allow"), b"GET, HEAD")


class LoginTests(SynchronousTestCase):
    def test_login_url_works_once(self):
        f = ConsoleFixture(self)
        token = f.credentials.new_login(f.wall.seconds())
        page = f.browser.get(f"/login?token={token}")
        self.assertEqual(page.code, 200)
        self.assertIn(token.encode(), page.body, "the GET only shows the form")
        self.assertEqual(f.browser.get("/clients").code, 401, "a GET logs nobody in")
        self.assertEqual(f.browser.post("/login", {"token": token}).code, 302)
        self.assertEqual(f.browser.get("/clients").code, 200)
        other = Browser(f.console)
        self.assertEqual(other.post("/login", {"token": token}).code, 403)
        self.assertEqual(other.get("/clients").code, 401)

    def test_login_url_expires(self):
        f = ConsoleFixture(self)
        token = f.credentials.new_login(f.wall.seconds())
        f.wall.advance(301)
        self.assertEqual(f.browser.post("/login", {"token": token}).code, 403)
        self.assertEqual(f.browser.get("/").code, 401)

    def test_unused_logins_are_forgotten(self):
        f = ConsoleFixture(self)
        f.credentials.new_login(f.wall.seconds())
        f.wall.advance(301)
        f.credentials.new_login(f.wall.seconds())
        names = [n for n in os.listdir(f.credentials.directory) if n.startswith("login-")]
        self.assertEqual(len(names), 1)

    def test_login_from_a_foreign_origin_refused(self):
        f = ConsoleFixture(self)
        token = f.credentials.new_login(f.wall.seconds())
        self.assertEqual(f.browser.post("/login", {"token": token},
                                        origin=b"http://evil.example").code, 403)

    def test_cookie_flags(self):
        f = ConsoleFixture(self)
        token = f.credentials.new_login(f.wall.seconds())
        cookie = f.browser.post("/login", {"token": token}).header(b"set-cookie")
        self.assertIn(b"HttpOnly", cookie)
        self.assertIn(b"SameSite=strict", cookie)
        self.assertIn(b"Max-Age=", cookie)
        self.assertNotIn(b"Secure", cookie)

    def test_cookie_secure_under_tls(self):
        f = ConsoleFixture(self, secure=True)
        token = f.credentials.new_login(f.wall.seconds())
        response = f.browser.post("/login", {"token": token}, origin=b"https://127.0.0.1:8750")
        self.assertIn(b"Secure", response.header(b"set-cookie"))

    def test_logout_ends_the_session(self):
        f = ConsoleFixture(self)
        csrf = f.login()
        self.assertEqual(f.browser.post("/logout", {"csrf": csrf}).code, 302)
        self.assertEqual(f.browser.get("/clients").code, 401)


class PagesTests(SynchronousTestCase):
    def test_clients_show_knocks_left(self):
        f = ConsoleFixture(self, knocks=5)
        f.h.knock("alice")
        f.login()
        page = f.browser.get("/clients").text
        self.assertIn("alice", page)
        self.assertIn("4 of 5", page)
        self.assertIn("5 of 5", page)

    def test_lift_from_the_lockouts_page(self):
        f = ConsoleFixture(self, lockout=600)
        locked_out(f)
        csrf = f.login()
        page = f.browser.get("/lockouts").text
        self.assertIn("198.51.100.1", page)
        self.assertIn("denied", page)
        self.assertIn("600 s", page)
        response = f.browser.post("/lift", {"source": "198.51.100.1", "csrf": csrf})
        self.assertEqual(response.header(b"location"), b"/lockouts")
        self.assertIn("Lifted: 198.51.100.1.", f.browser.get("/lockouts").text)
        self.assertNotIn("Lifted:", f.browser.get("/lockouts").text, "said once")
        line, *_ = f.h.handshake(ip="198.51.100.1")
        self.assertTrue(line.startswith(b"GRANT "), line)
        event = f.h.audit.of("admin-lift")[-1]
        self.assertEqual((event["lifted"], event["by"]), (["198.51.100.1"], "session"))

    def test_lockouts_a_page_at_a_time(self):
        """
        A flood from many addresses leaves thousands of lockouts in force:
        the Lockouts page shows 100 at a time (the whole server's first),
        with how many in all, pages and a search; the overview the first
        20 and the count.  (Drawing 65,536 at once held the daemon 7 s.)
        """
        from knocker.core.tracker import GLOBAL

        f = ConsoleFixture(self, lockout=600, **{"lockout-scope": "source"})
        tracker, now = f.h.server.tracker, f.h.clock.seconds()
        sources = [f"10.0.{n // 250}.{n % 250}" for n in range(2500)]
        for source in sources:
            tracker.restore_lockout(source, now + 600)
        tracker.restore_lockout(GLOBAL, now + 60)
        f.login()
        first = f.browser.get("/lockouts").text
        self.assertEqual(first.count(">Lift 10.0."), 99)
        self.assertIn(">Lift *<", first)
        self.assertIn("2501 lockouts in force", first)
        self.assertIn("page 1 of 26", first)
        self.assertIn(">Lift 10.0.0.0<", first)
        last = f.browser.get("/lockouts?page=26").text
        self.assertEqual(last.count(">Lift 10.0."), 1)
        self.assertIn(">Lift 10.0.9.99<", last, "the last by source")
        past = f.browser.get("/lockouts?page=900").text
        self.assertIn("page 26 of 26", past)
        found = f.browser.get("/lockouts?find=10.0.9.24").text
        self.assertIn("11 lockouts in force whose source holds", found)
        self.assertEqual(found.count(">Lift 10.0.9.24"), 11)
        self.assertNotIn("page 1 of", found)
        none = f.browser.get("/lockouts?find=192.0.2.").text
        self.assertIn("No lockout in force whose source holds", none)
        overview = f.browser.get("/").text
        self.assertEqual(overview.count("<td>10.0."), 19)
        self.assertIn("2501 in all", overview)
        text = f.browser.get("/api/status").text  # (chunked: the JSON between the braces)
        status = json.loads(text[text.index("{"):text.rindex("}") + 1])["overview"]
        self.assertEqual(len(status["lockouts"]), 20)
        self.assertEqual(status["lockouts"][0]["source"], GLOBAL)
        self.assertEqual(status["lockouts_in_force"], 2501)
        tracker.restore_lockout("2001:db8::/64", now + 600)
        upper = f.browser.get("/lockouts?find=2001:DB8").text
        self.assertIn("1 lockout in force whose source holds '2001:db8'", upper)

    def test_lift_by_an_address_written_otherwise(self):
        """
        knocker unlock --source ::ffff:198.51.100.1 (as a dual-stack log
        may show it) lifts the lockout the daemon keys as 198.51.100.1.
        """
        f = ConsoleFixture(self, lockout=600)
        locked_out(f)
        csrf = f.login()
        response = f.browser.post("/lift", {"source": "::ffff:198.51.100.1", "csrf": csrf})
        self.assertEqual(response.header(b"location"), b"/lockouts")
        self.assertIn("Lifted: 198.51.100.1.", f.browser.get("/lockouts").text)
        line, *_ = f.h.handshake(ip="198.51.100.1")
        self.assertTrue(line.startswith(b"GRANT "), line)

    def test_revoke_from_the_clients_page(self):
        f = ConsoleFixture(self)
        csrf = f.login()
        f.browser.post("/revoke", {"client": "alice", "csrf": csrf})
        line, *_ = f.h.handshake("alice")
        self.assertEqual(line, b"DENIED\n")
        self.assertNotIn("is revoked", f.browser.get("/lockouts").text, "not another page's")
        self.assertIn("alice is revoked: its next knock is DENIED.",
                      f.browser.get("/clients").text)

    def test_a_revoke_the_state_cannot_record_is_audited_and_said(self):
        """
        The state refuses the write (locked, a fleet's database away): the
        file is refused all the same, the audit log says so with the
        error, and the operator is told it is not saved, for a restart
        would take the file again.  Both kinds of store: one that raises,
        one that answers later (a fleet's).
        """
        import sqlite3

        from twisted.internet import defer

        for later in (False, True):
            f = ConsoleFixture(self)
            csrf = f.login()
            error = sqlite3.OperationalError("database is locked")

            def revoke(client, error=error, later=later):
                if later:
                    return defer.fail(error)
                raise error

            self.patch(f.h.server._store, "revoke", revoke)
            page = f.browser.post("/revoke", {"client": "alice", "csrf": csrf})
            self.assertEqual(page.code, 503, page.text)
            self.assertIn("refused by the running daemon, but the state could not record it "
                          "(database is locked)", page.text)
            event = f.h.audit.of("admin-revoke")[-1]
            self.assertEqual((event["client"], event["saved"], event["error"]),
                             ("alice", False, "database is locked"))
            line, *_ = f.h.handshake("alice")
            self.assertEqual(line, b"DENIED\n", f"refused at once (later: {later})")

    def test_a_link_cannot_make_a_page_claim_a_change(self):
        """
        The notice after a change is kept in the session: a link from
        another page of the same site (another port of the host, which the
        cookie's SameSite does not tell apart) cannot have the console
        say that a stolen client's file was revoked, or a lockout lifted.
        """
        f = ConsoleFixture(self)
        f.login()
        self.assertNotIn("is revoked", f.browser.get("/clients?revoked=alice").text)
        self.assertNotIn("Lifted", f.browser.get("/lockouts?lifted=198.51.100.1").text)

    def test_a_lift_or_revoke_that_cannot_be_done_says_why(self):
        """
        A browser gets a page (a lockout may have ended since the lockouts
        page was drawn), a bearer JSON; nothing changes and nothing is
        audited as done.
        """
        f = ConsoleFixture(self)
        csrf = f.login()
        token = f.credentials.new_bearer()
        api = Browser(f.console)
        for path, fields, code, words in (
                ("/lift", {"source": "2001:db8::/64"}, 400, "is not an address nor a lockout"),
                ("/revoke", {"client": "mallory"}, 404, "no client 'mallory'")):
            page = f.browser.post(path, {**fields, "csrf": csrf})
            self.assertEqual(page.code, code, page.text)
            self.assertEqual(page.header(b"content-type"), b"text/html; charset=utf-8")
            self.assertIn(words, page.text)
            answer = api.post(path, fields, origin=None,
                              headers={"authorization": f"Bearer {token}"})
            self.assertEqual(answer.code, code, answer.text)
            self.assertEqual(answer.header(b"content-type"), b"application/json")
            self.assertIn('{"error": ', answer.text)
            self.assertIn(words, answer.text)
        self.assertEqual(f.h.audit.of("admin-lift") + f.h.audit.of("admin-revoke"), [])

    def test_bearer_changes_without_csrf(self):
        f = ConsoleFixture(self, lockout=600)
        locked_out(f)
        token = f.credentials.new_bearer()
        api = Browser(f.console)
        response = api.post("/lift", {"source": "all"}, origin=None,
                            headers={"authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 200, response.text)
        self.assertEqual(f.h.server.tracker.lockouts(), {})
        self.assertEqual(f.h.audit.of("admin-lift")[-1]["by"], "bearer")

    def test_overview_shows_lockouts_and_last_events(self):
        f = ConsoleFixture(self, lockout=600)
        locked_out(f)
        f.login()
        page = f.browser.get("/").text
        self.assertIn("198.51.100.1", page)
        self.assertIn("lockout", page)
        self.assertIn("Up since", page)

    def test_only_the_pages_own_script_may_run(self):
        """
        The policy allows the overview's script by its hash, not every
        inline script: markup that got past the escaping could not run.
        """
        import base64
        import hashlib
        import re

        f = ConsoleFixture(self)
        f.login()
        response = f.browser.get("/")
        policy = response.header(b"content-security-policy").decode("ascii")
        script_src = re.search(r"script-src ([^;]*)", policy).group(1).split()
        scripts = re.findall(r"<script>(.*?)</script>", response.text, re.S)
        self.assertEqual(len(scripts), 1)
        digest = hashlib.sha256(scripts[0].encode("utf-8")).digest()
        self.assertEqual(script_src, ["'sha256-%s'" % base64.b64encode(digest).decode()])

    def test_a_browser_gone_before_a_slow_page_is_no_error(self):
        """
        A report or audit page is answered from a thread; a browser that
        left meanwhile (closed the tab) gets nothing written, and the log
        gets no "internal error" and no unhandled failure.
        """
        from twisted.internet.defer import Deferred
        from twisted.internet.error import ConnectionDone
        from twisted.python.failure import Failure

        f = ConsoleFixture(self)
        f.login()
        waiting = []

        def later(function):
            d = Deferred()
            waiting.append((d, function))
            return d

        f.console.blocking = later
        for path in ("/reports", "/audit"):
            request, written = f.browser.stream(path)
            self.assertEqual(len(waiting), 1)
            request.connectionLost(Failure(ConnectionDone()))
            d, function = waiting.pop()
            d.callback(function())
            self.assertEqual(written.getvalue(), b"", path)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_reports_page_has_a_chart_and_csv(self):
        f = ConsoleFixture(self)
        now = "2027-01-15T08"
        f.wall.advance(0)
        f.audit_path_lines([
            f'{{"time":"{now}:00:01.000000Z","event":"open","ip":"192.0.2.1","client":"alice"}}',
            f'{{"time":"{now}:00:02.000000Z","event":"fail","ip":"192.0.2.1","client":"alice",'
            f'"reason":"timeout"}}',
        ])
        f.login()
        page = f.browser.get("/reports?since=31d").text
        self.assertIn("<svg", page)
        self.assertIn("1 opens, 1 failures", page)
        csv = f.browser.get("/reports.csv?since=31d")
        self.assertEqual(csv.header(b"content-type"), b"text/csv; charset=utf-8")
        self.assertIn(b"2027-01-15T08,1,1,0,0,0,timeout=1", csv.body)

    def test_one_read_of_the_log_at_a_time(self):
        """
        A report or an audit search reads the whole log in a thread; while
        one runs, another gets 503 and when to try again, rather than a
        second copy of its memory and a second thread.
        """
        from twisted.internet.defer import Deferred

        f = ConsoleFixture(self)
        f.audit_path_lines(['{"time":"2027-01-15T08:00:01.000000Z","event":"open",'
                            '"ip":"192.0.2.1","client":"alice"}'])
        f.login()
        running = []

        def in_a_thread(work):
            running.append((Deferred(), work))
            return running[-1][0]

        at_once, f.console.blocking = f.console.blocking, in_a_thread
        _, first = f.browser.stream("/reports?since=31d")  # its answer waits for the thread
        for path in ("/reports?since=31d", "/audit", "/reports.csv?since=31d"):
            busy = f.browser.get(path)
            self.assertEqual(busy.code, 503, path)
            self.assertEqual(busy.header(b"retry-after"), b"5")
            self.assertIn("try again in a few seconds", busy.text)
        done, work = running.pop()
        done.callback(work())
        self.assertIn(b"<svg", first.getvalue(), "the first one answered")
        f.console.blocking = at_once
        self.assertEqual(f.browser.get("/audit").code, 200, "free again once it is done")
        f.console.blocking = in_a_thread
        f.browser.stream("/audit")
        running.pop()[0].errback(OSError("the log could not be read"))
        self.flushLoggedErrors(OSError)
        f.console.blocking = at_once
        self.assertEqual(f.browser.get("/audit").code, 200, "free again after a failed one")

    def test_lines_no_page_can_show_are_shown_escaped(self):
        """
        A damaged or foreign line in the log (a control character, a lone
        surrogate) broke the reports and audit pages with a 500.
        """
        f = ConsoleFixture(self)
        f.audit_path_lines([
            '{"time":"2027-01-15T08:00:03.000000Z","event":"fail","ip":"192.0.2.1",'
            '"client":"alice","reason":"x\\u0001y"}',
            '{"time":"2027-01-15T08:00:04.000000Z","event":"fail","ip":"192.0.2.1",'
            '"client":"bad\\ud800","reason":"timeout"}'])
        f.login()
        for path in ("/reports?since=1d", "/reports.csv?since=1d", "/audit"):
            response = f.browser.get(path)
            self.assertEqual(response.code, 200, (path, response.text[:300]))
            self.assertIn("x\\u0001y", response.text, path)
        self.assertIn("bad\\ud800", f.browser.get("/audit").text)

    def test_audit_page_filters_by_address(self):
        f = ConsoleFixture(self)
        f.audit_path_lines(
            [f'{{"time":"2027-01-15T08:00:{n:02d}.000000Z","event":"hit","ip":"192.0.2.{n % 2}"}}'
             for n in range(60)])
        f.login()
        page = f.browser.get("/audit?ip=192.0.2.1").text
        self.assertIn("30 events match", page)
        self.assertNotIn("192.0.2.0<", page)
        first = f.browser.get("/audit").text
        self.assertIn("60 events match", first)
        self.assertIn("page 1 of 2", first)
        self.assertIn("08:00:59", first)
        self.assertIn("08:00:00", f.browser.get("/audit?page=2").text)
        self.assertIn("Next", first)

    def test_audit_search_takes_an_address_however_it_is_written(self):
        """
        The address as typed or pasted (blanks, upper case, zeros written
        out, IPv4-mapped) finds what the log wrote of it, and an IPv6
        address finds its /64's lockouts; a time as the console shows it
        (with a space) is a time.
        """
        f = ConsoleFixture(self)
        f.audit_path_lines([
            '{"time":"2027-01-15T08:00:00.000000Z","event":"lockout","ip":"2001:db8::1",'
            '"source":"2001:db8::/64","scope":"source","reason":"denied"}',
            '{"time":"2027-01-15T09:00:00.000000Z","event":"hit","ip":"203.0.113.9"}'])
        f.login()
        for typed, count in ((" 203.0.113.9 ", 1), ("::ffff:203.0.113.9", 1),
                             ("2001:DB8::1", 1), ("2001:db8:0:0::1", 1), ("2001:db8::5", 1),
                             ("2001:db8:0:1::5", 0), ("2001:db8::/64", 1)):
            page = f.browser.get("/audit?" + urlencode({"ip": typed}))
            self.assertIn(f"{count} events match", page.text, typed)
        page = f.browser.get("/audit?" + urlencode({"since": "2027-01-15 09"}))
        self.assertIn("1 events match", page.text)

    def test_audit_search_finds_the_whole_servers_lockouts_by_star(self):
        f = ConsoleFixture(self)
        f.audit_path_lines([
            '{"time":"2027-01-15T08:00:00.000000Z","event":"lockout","ip":"192.0.2.1",'
            '"source":"*","scope":"global","reason":"wrong-port"}'])
        f.login()
        self.assertIn("1 events match", f.browser.get("/audit?ip=*").text)

    def test_metrics_for_a_bearer(self):
        f = ConsoleFixture(self)
        f.h.knock("alice")
        token = f.credentials.new_bearer()
        response = Browser(f.console).get("/metrics",
                                          headers={"authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 200)
        self.assertIn(b'knocker_handshakes_total{result="grant"} 1.0', response.body)
        self.assertIn(b'knocker_knocks_left{client="alice"} 4.0', response.body)


class OddQueryTests(SynchronousTestCase):
    """
    Query values no page links to get a 400 naming the field and what it
    may be, never a 500 with a traceback in the log.
    """

    def setUp(self):
        self.f = ConsoleFixture(self)
        self.f.audit_path_lines(
            ['{"time":"2027-01-15T08:00:00.000000Z","event":"hit","ip":"192.0.2.1"}'])
        self.f.login()

    def assertRefused(self, path, field, *allowed):
        response = self.f.browser.get(path)
        self.assertEqual(response.code, 400, path[:40])
        self.assertIn(f"{field}: ", response.text)
        for words in allowed:
            self.assertIn(words, response.text)
        self.assertEqual(self.flushLoggedErrors(), [])

    def test_audit_pages_past_the_bound(self):
        for page in ("9" * 19, "9" * 5000, "1001", "0", "-1", "2.5", "two"):
            self.assertRefused("/audit?page=" + page, "page", "a whole number from 1 to 1000")
        self.assertIn("1 events match", self.f.browser.get("/audit?page=1000").text)

    def test_audit_search_values_that_mean_nothing(self):
        from urllib.parse import quote

        self.assertRefused("/audit?ip=" + quote("192.0.2"), "ip", "an address")
        self.assertRefused("/audit?ip=alice", "ip", "an address")
        for name in ("since", "until"):
            for value in ("yesterday", "15/01/2027", "2027-1-15"):
                self.assertRefused(f"/audit?{name}=" + quote(value), name, "2026-12-01T16:19:05")

    def test_report_durations_past_ten_years(self):
        for since in ("9" * 400 + "d", "99999999999d", "3651d", "soon"):
            for route in ("/reports", "/reports.csv"):
                self.assertRefused(f"{route}?since={since}", "since", "at most 3650d")
        self.assertEqual(self.f.browser.get("/reports?bucket=day&since=3650d").code, 200)

    def test_hourly_reports_past_a_month(self):
        """
        A year of hours drew a 5 MB page in 3 s: per hour goes back 31
        days, and the answer says how to go further.
        """
        for route in ("/reports", "/reports.csv"):
            self.assertRefused(f"{route}?since=32d", "since", "at most 31d per hour",
                               "bucket=day")
            self.assertRefused(f"{route}?bucket=hour&since=3650d", "since", "at most 31d")
            self.assertEqual(self.f.browser.get(f"{route}?since=31d").code, 200)

    def test_report_buckets_are_hours_or_days(self):
        for bucket in ("week", "HOUR", "x" * 500):
            self.assertRefused(f"/reports?bucket={bucket}", "bucket", "hour or day")

    def test_a_bearer_is_told_in_json(self):
        token = self.f.credentials.new_bearer()
        response = Browser(self.f.console).get(
            "/audit?page=" + "9" * 30, headers={"authorization": f"Bearer {token}"})
        self.assertEqual(response.code, 400)
        self.assertEqual(response.header(b"content-type"), b"application/json")
        self.assertIn("page: a whole number", json.loads(response.body)["error"])
