"""
The console's routes and the one gate every request goes through.

L{ROUTES} is the whole site.  L{Console.render} looks the route up, then,
before any handler runs: refuses a request with neither an open session
(cookie) nor a valid bearer token, unless the route is public (the login);
and for a POST made with a session, refuses it unless its C{Origin} is
this site and its C{csrf} field is the session's token.  Only POST routes
change anything, and each change is an audit event (C{admin-...}).
A bearer token (the API, C{knocker unlock}/C{revoke}, a Prometheus
scraper) sends no cookie, so a page elsewhere cannot ride it: no CSRF
token is asked of it.
"""

import hmac
import ipaddress
import json
import socket
from urllib.parse import urlencode

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET

from knocker.console import auditquery, pages, view
from knocker.console.access import SESSION_SECONDS, cookie_name
from knocker.console.auditfiles import audit_lines
from knocker.console.events import MAX_SUBSCRIBERS, EventStream
from knocker.console.formats import as_csv, table_html
from knocker.console.report import parse_duration, summarise
from knocker.console.svg import report_chart
from knocker.core.isotime import iso_time
from knocker.core.sources import normalise_ip
from knocker.core.tracker import GLOBAL
from knocker.state.interface import StateError

log = Logger()


@frozen
class Route:
    method: str
    path: str
    handler: str
    public: bool = False


ROUTES = (
    Route("GET", "/login", "login_form", public=True),
    Route("POST", "/login", "login", public=True),
    Route("GET", "/", "overview"),
    Route("GET", "/clients", "clients"),
    Route("GET", "/lockouts", "lockouts"),
    Route("GET", "/reports", "reports"),
    Route("GET", "/reports.csv", "reports_csv"),
    Route("GET", "/audit", "audit"),
    Route("GET", "/events", "events"),
    Route("GET", "/metrics", "metrics"),
    Route("GET", "/api/status", "api_status"),
    Route("POST", "/lift", "lift"),
    Route("POST", "/revoke", "revoke"),
    Route("POST", "/invite", "invite"),
    Route("POST", "/logout", "logout"),
)

HEADERS = {
    b"x-frame-options": b"DENY",
    b"x-content-type-options": b"nosniff",
    # same-origin: the login URL (its token) never leaves in a Referer, and
    # Chromium still sends Origin on our POSTs (no-referrer makes it "null")
    b"referrer-policy": b"same-origin",
    b"cache-control": b"no-store",
    b"content-security-policy": (
        b"default-src 'none'; style-src 'unsafe-inline'; script-src "
        + pages.LIVE_SCRIPT_SOURCE.encode("ascii")
        + b"; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'"),
}


#: The longest report drawn per hour (31 days: 744 rows).
MAX_HOURLY = 31 * 86400


class BadArgument(ValueError):
    """
    A query field the console cannot answer: 400, with this message
    naming the field and what it may be.
    """


class ScanRunning(Exception):
    """Another report or audit search is reading the log: 503, try again."""


class Who:
    """
    Who is asking: a session (with its CSRF token) or a bearer token.
    """

    def __init__(self, kind: str, session: str | None = None, csrf: str | None = None):
        self.kind, self.session, self.csrf = kind, session, csrf


class Console(Resource):
    """
    The console.  C{server} is the L{KnockServer}; C{audit} the observed
    audit log (changes are recorded there); C{clock} the reactor's,
    C{wall} POSIX time; C{blocking} runs a function reading files away
    from the reactor (C{deferToThread} in the daemon) and returns a
    L{Deferred}.
    """

    isLeaf = True

    def __init__(self, server, config, audit, clock, wall, credentials, sessions, bus,
                 activity, metrics, daemon_token: str | None = None, blocking=maybeDeferred):
        super().__init__()
        self.server, self.config, self.audit = server, config, audit
        self.clock, self.wall = clock, wall
        self.credentials, self.sessions = credentials, sessions
        self.bus, self.activity, self.metrics = bus, activity, metrics
        self.daemon_token = daemon_token
        self.blocking = blocking
        self._scanning = False  # a report or audit search reads the log (see _scan)
        self.started = iso_time(wall())
        self.routes = {(route.method, route.path): route for route in ROUTES}

    # The gate.

    def render(self, request):
        body = self._render(request)
        if request.method == b"HEAD" and isinstance(body, bytes):
            # Its length only: given a HEAD's body, Twisted logs a warning
            # naming the request's URI, which may hold a login token.
            request.setHeader(b"content-length", b"%d" % len(body))
            return b""
        return body

    def _render(self, request):
        for name, value in HEADERS.items():
            request.setHeader(name, value)
        method = request.method.decode("ascii", "replace")
        path = request.path.decode("utf-8", "replace")
        # HEAD is GET without the body (Twisted drops what a HEAD writes).
        route = self.routes.get(("GET" if method == "HEAD" else method, path))
        who = None if route is not None and route.public else self._who(request)
        if route is None:
            if who is None:
                return self._refuse(request, 401, "Log in first.")
            allowed = [m for m, p in self.routes if p == path]
            if not allowed:
                return self._refuse(request, 404, "Not here.")
            if "GET" in allowed:
                allowed.append("HEAD")
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return self._refuse(request, 405, "Not with this method.")
        if not route.public and who is None:
            return self._refuse(request, 401, "You are not logged in.  On the server, run "
                                "'knocker console' and open the URL it prints.")
        if who is not None:  # its connection is never cut to make room (ConnectionLimit)
            request.channel.vouched = True
        if method == "POST" and (who is None or who.kind == "session"):
            if not self._same_origin(request):
                return self._refuse(request, 403, "Refused: this form was not sent from the "
                                    "console's own page (Origin).")
            if who is not None and not hmac.compare_digest(
                    (self._arg(request, "csrf") or "").encode(), who.csrf.encode()):
                return self._refuse(request, 403, "Refused: the form's CSRF token is missing "
                                    "or stale.  Reload the page and try again.")
        try:
            result = getattr(self, "page_" + route.handler)(request, who)
        except BadArgument as error:
            return self._problem(request, who, 400, "Not understood", str(error),
                                 back=route.path.removesuffix(".csv"))
        except ScanRunning as error:
            request.setHeader(b"retry-after", b"5")
            return self._problem(request, who, 503, "Busy", str(error),
                                 back=route.path.removesuffix(".csv"))
        if isinstance(result, Deferred):
            # A browser may leave while a thread draws its page (a tab
            # closed): then there is no one to answer, and nothing failed.
            gone = []
            request.notifyFinish().addErrback(gone.append)
            result.addCallback(self._finish, request, gone)
            result.addErrback(self._failed, request, gone)
            return NOT_DONE_YET
        return result

    def _finish(self, body, request, gone=()):
        if body is not NOT_DONE_YET and not gone:
            request.write(body)
            request.finish()

    def _failed(self, failure, request, gone=()):
        left = " (its browser had left)" if gone else ""
        if failure.check(StateError):
            log.error("console request {path}{left}: {error}", path=request.path, left=left,
                      error=failure.value)
        else:
            log.failure("console request {path}{left}", failure, path=request.path, left=left)
        if gone:
            return
        if failure.check(StateError):
            # The database of a fleet did not answer: say so, 503.
            request.setResponseCode(503)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            request.write(f"the state did not answer: {failure.value}\n".encode())
        else:
            request.setResponseCode(500)
            request.write(b"internal error")
        request.finish()

    def _who(self, request) -> Who | None:
        authorization = request.getHeader(b"authorization") or b""
        if authorization.startswith(b"Bearer "):
            token = authorization[7:].decode("ascii", "replace").strip()
            if self.credentials.bearer_ok(token, self.daemon_token):
                return Who("bearer")
            return None
        session = request.getCookie(cookie_name(request.getHeader(b"host")))
        if session is None:
            return None
        session = session.decode("ascii", "replace")
        csrf = self.sessions.csrf(session)
        return Who("session", session, csrf) if csrf is not None else None

    def _same_origin(self, request) -> bool:
        origin = request.getHeader(b"origin")
        host = request.getHeader(b"host")
        if not origin or not host:
            return False
        scheme = b"https://" if request.isSecure() else b"http://"
        return hmac.compare_digest(origin, scheme + host)

    def _refuse(self, request, code: int, message: str) -> bytes:
        request.setResponseCode(code)
        if request.getHeader(b"authorization") or request.path.startswith((b"/api/", b"/metrics")):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": message}).encode() + b"\n"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return pages.refused_page(message)

    @staticmethod
    def _arg(request, name: str) -> str:
        values = request.args.get(name.encode())
        return values[0].decode("utf-8", "replace") if values else ""

    def _html(self, request, body: bytes) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return body

    def _changed(self, request, who: Who, location: str, notice: str, answer: dict) -> bytes:
        """
        After a change: JSON to a bearer; for a browser, a redirect to the
        page, which shows C{notice} once (kept in the session, not in the
        URL).
        """
        if who.kind == "bearer":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(answer).encode() + b"\n"
        self.sessions.notice(who.session, location, notice)
        request.redirect(location.encode())
        return b""

    # Logging in and out.

    def page_login_form(self, request, who):
        return self._html(request, pages.login_page(self._arg(request, "token")))

    def page_login(self, request, who):
        if not self.credentials.redeem_login(self._arg(request, "token"), self.wall()):
            request.setResponseCode(403)
            return self._html(request, pages.login_page(
                "", "This login URL has been used or has expired.  Run 'knocker console' "
                    "again for a new one."))
        session, _ = self.sessions.open()
        self._set_cookie(request, session.encode(), str(int(self.sessions.seconds)).encode())
        self.audit.record("admin-login")
        request.redirect(b"/")
        return b""

    @staticmethod
    def _set_cookie(request, value: bytes, max_age: bytes) -> None:
        request.addCookie(cookie_name(request.getHeader(b"host")), value, path=b"/",
                          httpOnly=True, secure=request.isSecure(), sameSite="strict",
                          max_age=max_age)

    def page_logout(self, request, who):
        if who.session is not None:
            self.sessions.close(who.session)
            self.bus.end_session(who.session)
            self.audit.record("admin-logout")
        self._set_cookie(request, b"", b"0")
        request.redirect(b"/login")
        return b""

    # Pages.

    def _state(self) -> Deferred:
        """The state's part of a page (L{view.read_state}): never read on the reactor."""
        return view.read_state(self.server.store)

    def page_overview(self, request, who):
        def draw(state):
            data = view.overview(self.server, state, self.started, self.clock, self.config)
            return self._html(request, pages.overview_page(data, list(self.bus.recent),
                                                           who.csrf))
        return self._state().addCallback(draw)

    def _page_number(self, request) -> int:
        try:
            return max(1, int(self._arg(request, "page") or 1))
        except ValueError:
            return 1

    def page_clients(self, request, who):
        number = self._page_number(request)
        per = view.CLIENTS_PER_PAGE
        message = self.sessions.take_notice(who.session, "/clients")

        def draw(state):
            total = len(state.clients)
            rows = view.clients(self.server, state, self.clock, self.activity,
                                (number - 1) * per, per)
            return self._html(request, pages.clients_page(
                rows, who.csrf or "", message, number, max(1, -(-total // per)),
                view.invitations(state, self.wall()), {"knocks": self.config.knocks}))
        return self._state().addCallback(draw)

    def page_lockouts(self, request, who):
        number = self._page_number(request)
        find = self._arg(request, "find").strip()[:64].lower()  # (keys are lower case)
        per = view.LOCKOUTS_PER_PAGE
        rows, total = view.lockouts(self.server, self.clock, self.activity,
                                    (number - 1) * per, per, find)
        last = max(1, -(-total // per))
        if number > last:  # ended since the link was drawn: the last page
            number = last
            rows, total = view.lockouts(self.server, self.clock, self.activity,
                                        (number - 1) * per, per, find)
        message = self.sessions.take_notice(who.session, "/lockouts")
        return self._html(request, pages.lockouts_page(
            rows, who.csrf or "", message, number, max(1, -(-total // per)), total, find))

    def _report(self, request, render):
        """
        The report the query asks for, summed and then C{render(report,
        bucket, since)}ed in a thread: drawing a month of hours took the
        reactor 0.2 s here, a year of them 3 s.
        """
        bucket = self._arg(request, "bucket") or "hour"
        if bucket not in ("hour", "day"):
            raise BadArgument(f"bucket: hour or day, not {bucket[:20]!r}")
        since_text = self._arg(request, "since") or ("7d" if bucket == "day" else "24h")
        try:
            seconds = parse_duration(since_text)
        except ValueError as error:
            raise BadArgument(f"since: {error}") from None
        if bucket == "hour" and seconds > MAX_HOURLY:
            raise BadArgument(f"since: at most {MAX_HOURLY // 86400}d per hour, not "
                              f"{since_text[:20]!r}; for longer, per day (bucket=day)")
        start = self.wall() - seconds
        path = self.config.audit_path
        return self._scan(lambda: render(
            summarise(audit_lines(path, start), bucket, iso_time(start)), bucket, since_text))

    def page_reports(self, request, who):
        def draw(report, bucket, since):
            return pages.reports_page(report, report_chart(report), table_html(report), bucket,
                                      since, who.csrf)
        return self._report(request, draw).addCallback(lambda body: self._html(request, body))

    def page_reports_csv(self, request, who):
        def write(body):
            request.setHeader(b"content-type", b"text/csv; charset=utf-8")
            request.setHeader(b"content-disposition",
                              b'attachment; filename="knocker-report.csv"')
            return body
        return self._report(request, lambda report, *_: as_csv(report).encode()).addCallback(
            write)

    def page_audit(self, request, who):
        filters = {name: self._arg(request, name).strip()[:100]
                   for name in ("ip", "client", "event", "since", "until")}
        filters["ip"], filters["source"] = self._searched(filters["ip"])
        for name in ("since", "until"):
            if filters[name]:
                written = auditquery.time_filter(filters[name])
                if written is None:
                    raise BadArgument(f"{name}: a time as 2026-12-01T16:19:05, or its start "
                                      f"(2026-12-01, 2026-12-01 16), not {filters[name][:40]!r}")
                filters[name] = written
        number = self._arg(request, "page") or "1"
        if not (number.isascii() and number.isdigit() and len(number) <= 9
                and 1 <= int(number) <= auditquery.MAX_PAGE):
            raise BadArgument(f"page: a whole number from 1 to {auditquery.MAX_PAGE}, not "
                              f"{number[:20]!r}; for older events, narrow the search with "
                              f"until")
        number = int(number)
        path = self.config.audit_path

        def draw(found):
            entries, total = found
            pages_count = max(1, min(-(-total // auditquery.PER_PAGE), auditquery.MAX_PAGE))

            def link(n):
                return "/audit?" + urlencode({**{k: v for k, v in filters.items()
                                                 if v and k != "source"}, "page": n})
            return self._html(request, pages.audit_page(entries, total, filters, number,
                                                        pages_count, who.csrf, link))
        d = self._scan(lambda: auditquery.query(audit_lines(path), page=number, **filters))
        return d.addCallback(draw)

    def _searched(self, text: str) -> tuple[str, str]:
        """
        The audit search's address written as the daemon writes it (an
        IPv4-mapped address as IPv4, an IPv6 address however it was typed),
        or a network (a source as lockouts name it); and the source key it
        counts under, whose lockouts concern it too (or "").

        @raise BadArgument: neither an address nor a network.
        """
        if not text or text == GLOBAL:  # (*: the whole server's lockouts)
            return text, ""
        try:
            address = ipaddress.ip_address(text.split("%", 1)[0])
        except ValueError:
            try:
                return str(ipaddress.ip_network(text, strict=False)), ""
            except ValueError:
                raise BadArgument(f"ip: an address, or a network as 2001:db8:1:2::/64, "
                                  f"not {text[:40]!r}") from None
        ip = normalise_ip(str(address))
        return ip, self.server.tracker.source_of(ip)

    def page_events(self, request, who):
        if len(self.bus.subscribers) >= MAX_SUBSCRIBERS:
            # EventSource gives up for good on a non-200 answer (no retry):
            # that page shows no new events until it is reloaded.
            request.setResponseCode(503)
            return b"too many live pages open\n"
        if request.method == b"HEAD":
            request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
            return b""  # no stream to start for headers alone
        # Ended at logout or expiry: the gate checked the session only now.
        # A bearer's stream ends as a session would, so a token taken out of
        # the tokens file stops streaming within that time.
        ends = (self.sessions.expiry(who.session) if who.session is not None
                else self.clock.seconds() + SESSION_SECONDS)
        if ends is None:  # expired between the gate's look and this one
            request.setResponseCode(401)
            return b"not logged in\n"
        EventStream(request, self.bus, session=who.session, clock=self.clock, ends=ends)
        return NOT_DONE_YET

    def page_metrics(self, request, who):
        from prometheus_client import CONTENT_TYPE_LATEST

        def write(state):
            request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
            return self.metrics.text(state)
        return self._state().addCallback(write)

    def page_api_status(self, request, who):
        def write(state):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({
                "overview": view.overview(self.server, state, self.started, self.clock,
                                          self.config),
                "clients": view.clients(self.server, state, self.clock, self.activity),
            }).encode() + b"\n"
        return self._state().addCallback(write)

    # Changes (POST only, audited).

    def page_lift(self, request, who):
        source = self._arg(request, "source").strip()
        if source == "all":
            key = None
        elif source == GLOBAL or source in self.server.tracker.lockouts():
            key = source  # a key as the lockouts page shows it
        else:
            try:
                ipaddress.ip_address(source)
            except ValueError:
                # (A lockout lifted or ended since the page was drawn, too.)
                return self._problem(request, who, 400, "Not understood",
                                     f"{source[:100]!r} is not an address nor a lockout in "
                                     f"force", back="/lockouts")
            # As the daemon keys what it sees: an IPv4-mapped address as
            # IPv4, an IPv6 address however it is spelled.
            key = self.server.tracker.source_of(normalise_ip(source))

        def done(lifted):
            self.audit.record("admin-lift", source=source, lifted=lifted, by=who.kind)
            return self._changed(request, who, "/lockouts",
                                 f"Lifted: {', '.join(lifted) or 'nothing'}.", {"lifted": lifted})
        # Answered once the state has it (a fleet: every gateway is told).
        return maybeDeferred(self.server.lift, key).addCallback(done)

    def page_revoke(self, request, who):
        client = self._arg(request, "client").strip()

        from knocker.daemon.coordinator import RevokeNotSaved

        def done(revoked):
            if not revoked:
                return self._problem(request, who, 404, "No such client",
                                     f"no client {client[:100]!r}")
            self.audit.record("admin-revoke", client=client, by=who.kind)
            return self._changed(request, who, "/clients",
                                 f"{client} is revoked: its next knock is DENIED.",
                                 {"revoked": client})

        def not_saved(failure):
            failure.trap(RevokeNotSaved)
            self.audit.record("admin-revoke", client=client, by=who.kind, saved=False,
                              error=failure.value.why)
            return self._problem(request, who, 503, "Revoked, not saved", str(failure.value))
        return maybeDeferred(self.server.revoke, client).addCallbacks(done, not_saved)

    def page_invite(self, request, who):
        """
        C{knocker invite} in the running daemon: the client made in its own
        store and book (served at once) and the code shown this once (the
        audit event names the client, never the code).
        """
        from knocker.admin.clients import ClientExists
        from knocker.enrol.invite import DEFAULT_EXPIRES, check_invite

        client = self._arg(request, "client").strip()
        force = self._arg(request, "replace") in ("yes", "on", "true", "1")
        try:
            knocks_text = self._arg(request, "knocks").strip()
            knocks = int(knocks_text) if knocks_text else self.config.knocks
            if not 1 <= knocks <= 1_000_000:
                raise ValueError(f"knocks must be from 1 to 1000000, not {knocks}")
            expires_text = self._arg(request, "expires").strip()
            expires = parse_duration(expires_text) if expires_text else DEFAULT_EXPIRES
            check_invite(client, expires)
        except ValueError as error:
            return self._problem(request, who, 400, "Not invited",
                                 str(error).replace("--expires", "the time the code works"))

        def done(invited):
            self.audit.record("admin-invite", client=client, slot=invited.slot,
                              expires=iso_time(invited.expires), knocks=knocks,
                              replaced=force, by=who.kind)
            # getfqdn may ask DNS: off the reactor.
            return self._blocking_call(socket.getfqdn).addCallback(shown, invited)

        def shown(host, invited):
            command = (f"knocker enroll {invited.code} --server "
                       f"{view.enrol_endpoint(self.config.central, host, self.server.central_port)}")
            if who.kind == "bearer":
                request.setHeader(b"content-type", b"application/json")
                return json.dumps({"client": client, "code": invited.code,
                                   "slot": invited.slot, "expires": invited.expires,
                                   "command": command}).encode() + b"\n"
            return self._html(request, pages.invited_page(
                client, invited.code, command, view.minute(invited.expires), knocks, who.csrf))

        def refused(failure):
            failure.trap(ValueError)
            if not failure.check(ClientExists):  # more ports a knock than the pool holds
                return self._problem(request, who, 400, "Not invited", str(failure.value))
            return self._problem(
                request, who, 409, "Not invited",
                f"Client {client} exists already.  To give it a new file and a code, tick "
                f"'Replace an existing client' and press Invite again: its old file stops "
                f"working.  ({str(failure.value).split(';')[0]}.)")
        return maybeDeferred(self.server.invite, client, knocks,
                             self.config.ports_per_knock, expires, force, self.wall(),
                             self._blocking_call).addCallbacks(done, refused)

    def _blocking_call(self, function, *args) -> Deferred:
        return self.blocking(lambda: function(*args))

    def _scan(self, work) -> Deferred:
        """
        C{work}, a read through the audit log (a report, a search), in a
        thread, one at a time: each takes seconds over a log that outsiders
        fill, and memory (bounded, but tens of MB for a report's top
        counts), so ten pages at once must not read it, nor fill the
        thread pool that writes the daemon's files.
        """
        if self._scanning:
            raise ScanRunning("a report or an audit search is reading the log now; "
                              "try again in a few seconds")
        self._scanning = True

        def done(result):
            self._scanning = False
            return result

        try:
            running = self.blocking(work)
        except BaseException:
            self._scanning = False  # it never started: the gate stays open
            raise
        return running.addBoth(done)

    def _problem(self, request, who, code: int, title: str, message: str,
                 back: str = "/clients") -> bytes:
        request.setResponseCode(code)
        if who.kind == "bearer":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"error": message}).encode() + b"\n"
        return self._html(request, pages.problem_page(title, message, who.csrf, back))
