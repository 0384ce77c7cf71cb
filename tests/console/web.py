"""
An in-memory browser for the console: real L{twisted.web.server.Request}s
on a L{DummyChannel} (no socket), cookies kept like a browser keeps them.
"""

import os
from http.cookies import SimpleCookie
from io import BytesIO
from urllib.parse import urlencode

from twisted.internet.task import Clock
from twisted.web.server import Request, Site
from twisted.web.test.requesthelper import DummyChannel

from knocker.console.access import Credentials, Sessions
from knocker.console.events import EventBus, ObservedAudit
from knocker.console.metrics import Metrics
from knocker.console.resource import Console
from knocker.console.view import Activity
from tests.helpers.harness import Harness

HOST = b"127.0.0.1:8750"
ORIGIN = b"http://" + HOST
_OWN = object()  # the browser's own origin


class Response:
    def __init__(self, raw: bytes):
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.code = int(lines[0].split()[1])
        self.headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class Browser:
    """
    Requests to C{resource}; C{secure} makes the channel TLS.
    """

    def __init__(self, resource, secure: bool = False, host: bytes = HOST,
                 cookies: dict[str, str] | None = None):
        self.site = Site(resource)
        #: Kept by host name, not port, as browsers do: give two browsers
        #: the same dict for one browser visiting two ports of a host.
        self.cookies: dict[str, str] = {} if cookies is None else cookies
        self.secure = secure
        self.host = host
        #: Called with the channel after the request is in, before its answer
        #: is read (a test answering a store that answers later).
        self.settle = None

    def request(self, method: str, path: str, fields: dict | None = None,
                headers: dict | None = None, origin: bytes | None | object = _OWN) -> Response:
        if origin is _OWN:
            origin = b"http://" + self.host
        _, written = self._send(method, path, fields, headers, origin)
        response = Response(written.getvalue())
        for name, value in response.headers:
            if name.lower() == b"set-cookie":
                for key, morsel in SimpleCookie(value.decode()).items():
                    if morsel.value:
                        self.cookies[key] = morsel.value
                    else:
                        self.cookies.pop(key, None)
        return response

    def stream(self, path: str, headers: dict | None = None) -> tuple[Request, BytesIO]:
        """
        A GET left open (server-sent events): its request, and what is
        written to it so far (it grows as the answer goes on).
        """
        return self._send("GET", path, None, headers, b"http://" + self.host)

    def _send(self, method, path, fields, headers, origin) -> tuple[Request, BytesIO]:
        channel = DummyChannel()
        if self.secure:
            channel.transport = DummyChannel.SSL()
        channel.site = self.site
        request = Request(channel)
        body = urlencode(fields or {}).encode()
        request.requestHeaders.setRawHeaders(b"host", [self.host])
        if method == "POST":
            request.requestHeaders.setRawHeaders(
                b"content-type", [b"application/x-www-form-urlencoded"])
            request.requestHeaders.setRawHeaders(b"content-length", [str(len(body)).encode()])
            if origin is not None:
                request.requestHeaders.setRawHeaders(b"origin", [origin])
        if self.cookies:
            request.requestHeaders.setRawHeaders(
                b"cookie", ["; ".join(f"{k}={v}" for k, v in self.cookies.items()).encode()])
        for name, value in (headers or {}).items():
            request.requestHeaders.setRawHeaders(name.encode(), [value.encode()])
        request.content = BytesIO(body)
        request.content.seek(0, 2)  # as if received: the length is where it ends
        request.parseCookies()  # (the channel does it when the headers are in)
        request.requestReceived(method.encode(), path.encode(), b"HTTP/1.1")
        if self.settle is not None:
            self.settle(channel)
        return request, channel.transport.written

    def get(self, path: str, **kwargs) -> Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, fields: dict | None = None, **kwargs) -> Response:
        return self.request("POST", path, fields, **kwargs)


class ConsoleFixture:
    """
    A coordinator (L{Harness}: Clock, real store, in-memory audit) with the
    console in front of it, and a L{Browser}.
    """

    def __init__(self, testcase, secure: bool = False, **config):
        self.h = Harness(testcase, clients=("alice", "bob"), **config)
        self.wall = Clock()
        self.wall.advance(1_800_000_000)
        self.bus = EventBus(self.h.clock)
        self.metrics = Metrics(self.h.clock)
        self.activity = Activity(self.h.clock)
        self.audit = ObservedAudit(self.h.audit, self.wall.seconds,
                                   (self.metrics.event, self.activity, self.bus.publish),
                                   self.metrics.hit)
        self.h.server._audit = self.audit  # as the daemon builds it: events pass through
        self.metrics.attach(self.h.server)
        self.credentials = Credentials(self.h.config.state_dir)
        self.sessions = Sessions(self.h.clock)
        self.console = Console(self.h.server, self.h.config, self.audit, self.h.clock,
                               self.wall.seconds, self.credentials, self.sessions, self.bus,
                               self.activity, self.metrics, daemon_token="d" * 43)
        self.browser = Browser(self.console, secure=secure)

    def login(self, browser: Browser | None = None) -> str:
        """
        Log C{browser} in as C{knocker console} would; return its CSRF token.
        """
        browser = browser or self.browser
        token = self.credentials.new_login(self.wall.seconds())
        response = browser.post("/login", {"token": token})
        assert response.code == 302, response.text
        page = browser.get("/")
        start = page.text.index('name="csrf" value="') + len('name="csrf" value="')
        return page.text[start:page.text.index('"', start)]

    def audit_path_lines(self, lines: list[str]) -> None:
        os.makedirs(os.path.dirname(self.h.config.audit_path), exist_ok=True)
        with open(self.h.config.audit_path, "w") as handle:
            handle.writelines(line + "\n" for line in lines)
        # Written "now" on the console's clock, which reports use to skip
        # files last written before their start.
        now = self.wall.seconds()
        os.utime(self.h.config.audit_path, (now, now))

    def state(self) -> tuple:
        """
        Everything a request could change.
        """
        store = self.h.store
        return (
            [(c.client, c.next_index) for c in store.clients()],
            store.revoked(),
            sorted(self.h.server.tracker.lockouts()),
            store.lockouts(0),
            store.invitations(),
            sorted(os.listdir(os.path.join(self.h.config.state_dir, "clients"))),
            [e for e in self.h.audit.events if not e["event"].startswith("admin-log")],
        )
