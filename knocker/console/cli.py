"""
C{knocker console}, C{knocker report}, C{knocker unlock}, C{knocker revoke}:
the operator's commands on a running daemon (docs/console.md).

C{unlock} and C{revoke} act at once through the console's API (on the
daemon's commands socket, else its console), with the token the running
daemon keeps in C{state-dir/console/daemon.json} (0600):
whoever can read the daemon's state may use them, and the change is
audited by the daemon like one made on the page.
"""

import json
import sys
import time


class NotRunning(OSError):
    """
    The daemon (or its console) is not running; the message says how to
    tell.  (An L{OSError}: C{knocker} exits 1 with the message.)
    """


def _daemon(config) -> dict:
    from knocker.console.access import Credentials

    if not config.admin:
        raise NotRunning("the running daemon is reached through its console, which is off "
                         "(admin is empty in the server configuration): set admin (the "
                         "default, tcp:8750:interface=127.0.0.1, serves loopback only) and "
                         "restart it (to shut a client out without it: knocker generate "
                         "CLIENT --force gives it a new file, and the old one is refused)")
    found = Credentials(config.state_dir).daemon()
    if found is None:
        raise NotRunning(f"the daemon is not running on {config.state_dir} (no "
                         f"console/daemon.json); start it: systemctl start knocker")
    return found


def _context(url: str, config):
    """
    For an C{https} console, a TLS context that trusts the certificate the
    daemon serves and nothing else (the first in the file its C{admin}
    endpoint names): the commands reach their own daemon on whatever
    address it listens, with a private CA or a self-signed certificate,
    and the name in the certificate need not be the address they dial.
    """
    import ssl

    from knocker.core.serverconfig import admin_certificate

    if not url.startswith("https:"):
        return None
    path = admin_certificate(config.admin)
    try:
        with open(path, encoding="ascii") as handle:
            text = handle.read()
    except (OSError, TypeError, UnicodeDecodeError) as error:
        raise NotRunning(f"cannot read the console's certificate ({path}: {error}); the "
                         f"commands trust that certificate alone") from None
    blocks = [block.split("-----END CERTIFICATE-----")[0]
              for block in text.split("-----BEGIN CERTIFICATE-----")[1:]]
    if not blocks:
        raise NotRunning(f"{path} holds no certificate; the commands trust the console's "
                         f"certificate alone")
    # The first is the one served; the rest of a chain file would make
    # whatever its CA signed trusted too.
    pem = f"-----BEGIN CERTIFICATE-----{blocks[0]}-----END CERTIFICATE-----\n"
    context = ssl.create_default_context(cadata=pem)
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN  # the served certificate, pinned
    context.check_hostname = False
    return context


class DaemonFailed(Exception):
    """The daemon could not do what was asked (its state, say): exit 1, not a usage error."""


def _answer(code: int, body: bytes) -> dict:
    """
    The API's JSON answer; L{ValueError} with its error when it refused
    what was asked (4xx), L{DaemonFailed} when it failed at it (5xx).
    """
    if code == 200:
        return json.loads(body)
    try:
        message = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        # A plain-text refusal (too many connections, the state down): its line.
        first = body.decode("utf-8", "replace").strip().splitlines()[:1]
        message = f"HTTP {code}" + (f": {first[0][:200]}" if first else "")
    raise (DaemonFailed if code >= 500 else ValueError)(message)


#: The longest name a UNIX socket may have (sun_path, less its final NUL).
SOCKET_NAME_MAX = 107


def _call_socket(socket_path: str, path: str, body: bytes, token: str) -> dict | None:
    """
    POST C{body} to the API on the daemon's commands socket; C{None} when
    there is none (a name too long for a socket, or an older daemon) or
    this user may not use it, so the caller tries the TCP console.
    """
    import http.client
    import os
    import socket

    if len(os.fsencode(socket_path)) > SOCKET_NAME_MAX:
        return None

    class Local(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(self.timeout)
            self.sock.connect(socket_path)

    connection = Local("localhost", timeout=10)
    try:
        connection.request("POST", path, body, {
            "Authorization": f"Bearer {token}",
            "Content-Type": "application/x-www-form-urlencoded"})
        reply = connection.getresponse()
        return _answer(reply.status, reply.read())
    except (FileNotFoundError, PermissionError):
        return None
    except ConnectionRefusedError:
        # Left by a daemon that was killed: the one on the console's port,
        # if any, is not the one whose token we hold.
        raise NotRunning(f"the daemon is not running (its commands socket {socket_path} "
                         f"refuses); start it: systemctl start knocker") from None
    except TimeoutError:
        raise NotRunning(f"the daemon did not answer within {connection.timeout:.0f} s on "
                         f"{socket_path}; the change may still be made: see the audit "
                         f"log") from None
    except (OSError, http.client.HTTPException) as error:
        raise NotRunning(f"the daemon's commands socket {socket_path} does not answer "
                         f"({error}): is the daemon running?") from None
    finally:
        connection.close()


def call(config, path: str, fields: dict) -> dict:
    """
    POST C{fields} to the running daemon's API, through its commands socket
    (L{knocker.console.site.ConsoleService}) or else its console; its JSON
    answer.
    """
    import urllib.error
    import urllib.parse
    import urllib.request

    from knocker.console.access import Credentials

    daemon = _daemon(config)
    body = urllib.parse.urlencode(fields).encode()
    answer = _call_socket(Credentials(config.state_dir).command_socket(), path, body,
                          daemon["token"])
    if answer is not None:
        return answer
    request = urllib.request.Request(
        daemon["url"].rstrip("/") + path, data=body,
        headers={"Authorization": f"Bearer {daemon['token']}"}, method="POST")
    try:
        context = _context(daemon["url"], config)
        with urllib.request.urlopen(request, timeout=10, context=context) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as error:
        return _answer(error.code, error.read())
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        import ssl

        if isinstance(reason, ssl.SSLError):
            raise NotRunning(f"the console at {daemon['url']} does not serve the certificate "
                             f"in {config.admin} ({reason})") from None
        raise NotRunning(f"the daemon's console at {daemon['url']} does not answer "
                         f"({reason}): is the daemon running?") from None


def console_command(config, args) -> int:
    from urllib.parse import urlsplit

    from knocker.admin.owner import StateOwner
    from knocker.console.access import LOGIN_SECONDS, Credentials

    credentials = Credentials(config.state_dir)
    if args.token:
        with StateOwner(config.state_dir):
            token = credentials.new_bearer()
        print(token)
        print("a bearer token for the API and /metrics (Authorization: Bearer TOKEN); only "
              "its hash is kept, so keep it now", file=sys.stderr)
        return 0
    url = _daemon(config)["url"]
    with StateOwner(config.state_dir):
        token = credentials.new_login(time.time())
    port = urlsplit(url).port
    print(f"{url}login?token={token}")
    print(f"open it within {LOGIN_SECONDS // 60} minutes; it works once.  From another "
          f"machine: ssh -L {port}:127.0.0.1:{port} THIS-HOST, then open the URL there.",
          file=sys.stderr)
    return 0


def report_command(config, args) -> int:
    from knocker.console.auditfiles import audit_lines
    from knocker.console.formats import FORMATS
    from knocker.console.report import parse_duration, summarise
    from knocker.core.isotime import iso_time

    start = None
    if args.since:
        start = time.time() - parse_duration(args.since)
    report = summarise(audit_lines(config.audit_path, start), args.per,
                       iso_time(start) if start is not None else None)
    states = _client_states(config)
    if states:
        span = time.time() - start if start is not None else _span(report)
        report.add_clients(states, span)
    sys.stdout.write(FORMATS[args.format](report))
    return 0


def _client_states(config) -> list:
    """
    The clients' counters, if the state is there (a report may be run on
    a copied audit log alone; a fleet's database may be out of reach).
    """
    import os

    from knocker.admin.clients import status
    from knocker.state.interface import StateError

    if config.database:
        try:
            return status(config)["clients"]  # a fleet's: from its database
        except StateError as error:
            print(f"knocker report: without the clients' counters: {error}", file=sys.stderr)
            return []
    if not os.path.exists(os.path.join(config.state_dir, "state.sqlite")):
        return []
    return status(config)["clients"]


def _span(report) -> float:
    from datetime import datetime

    if report.first is None:
        return 0.0
    first = datetime.fromisoformat(report.first.replace("Z", "+00:00"))
    return max(0.0, time.time() - first.timestamp())


def unlock_command(config, args) -> int:
    try:
        answer = call(config, "/lift", {"source": "all" if args.all else args.source})
    except DaemonFailed as failure:
        print(f"knocker unlock: {failure}", file=sys.stderr)
        return 1
    lifted = answer.get("lifted", [])
    print(f"lifted: {', '.join(lifted)}" if lifted else "no such lockout in force")
    return 0


def revoke_command(config, args) -> int:
    try:
        answer = call(config, "/revoke", {"client": args.client})
    except DaemonFailed as failure:  # refused by the running daemon, not saved: it says so
        print(f"knocker revoke: {failure}", file=sys.stderr)
        return 1
    print(f"{answer['revoked']} is revoked: its next knock is DENIED "
          f"(knocker generate {answer['revoked']} --force gives it a new file)")
    return 0


def add_commands(commands, common) -> None:
    """
    The four subcommands on C{knocker}'s parser; C{common(parser)}, once
    C{run} is set, adds --config and --state-dir and hands C{run} the config.
    """
    console = commands.add_parser("console", help="print a one-time login URL for the web "
                                  "console (or --token: a bearer token for the API)")
    console.add_argument("--token", action="store_true",
                         help="make a bearer token for the API and /metrics instead")
    console.set_defaults(run=console_command)
    common(console)

    report = commands.add_parser("report", help="sum up the audit log: opens, failures, "
                                 "lockouts, denials, hits")
    report.add_argument("--since", help="only the last DURATION (30m, 24h, 7d)")
    report.add_argument("--per", choices=("hour", "day"), default="hour",
                        help="one row per hour or per day")
    report.add_argument("--format", choices=("text", "csv", "json", "html"), default="text")
    report.set_defaults(run=report_command)
    common(report)

    unlock = commands.add_parser("unlock", help="lift lockouts on the running daemon")
    which = unlock.add_mutually_exclusive_group(required=True)
    which.add_argument("--source", help="the address (or source key) to lift")
    which.add_argument("--all", action="store_true", help="lift every lockout")
    unlock.set_defaults(run=unlock_command)
    common(unlock)

    revoke = commands.add_parser("revoke", help="refuse a client from its next knock on")
    revoke.add_argument("client")
    revoke.set_defaults(run=revoke_command)
    common(revoke)
