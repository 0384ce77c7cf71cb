"""
The C{knocker} command: generate, knock, connect, status, demo, and the
console's (console, report, unlock, revoke: L{knocker.console.cli}).

Imports are kept inside the subcommands so that C{knocker generate} and
C{knocker status} never load the reactor.

The commands that work on the server's state read the daemon's
configuration: C{--config FILE}, or L{DEFAULT_CONFIG} when it exists.  With
neither (and no C{--state-dir}) they refuse, rather than make a state in
the working directory that no daemon reads.
"""

import argparse
import json
import os
import sys
import time

from knocker.core.config import ConfigError
from knocker.core.knockfile import KnockFileError
from knocker.core.serverconfig import load_server_config
from knocker.files import PrivateFileError

USAGE_ERROR = 2

#: Where the documented installation keeps the daemon's configuration.
DEFAULT_CONFIG = "/etc/knocker/knockserver.conf"


def server_config(args):
    """
    The daemon's configuration for a command on its state (see above).
    """
    path = args.config
    if path is None and os.path.exists(DEFAULT_CONFIG):
        path = DEFAULT_CONFIG
    if path is None and getattr(args, "state_dir", None) is None:
        raise ValueError(
            f"which server? pass --config FILE (the daemon's configuration; "
            f"{DEFAULT_CONFIG} is used when it exists, and it does not), or --state-dir DIR"
        )
    return load_server_config(path, _overrides(args, ("state-dir",)))


def _generate(args) -> int:
    from knocker.admin.clients import generate_client
    from knocker.core.knockfile import valid_client_id

    config = server_config(args)
    if not valid_client_id(args.client):
        raise ValueError(f"client id {args.client!r} must match [a-z0-9][a-z0-9_.-]{{0,63}}")
    output = args.output or f"{args.client}.knock"
    knocks = args.knocks if args.knocks is not None else config.knocks
    ports = args.ports if args.ports is not None else config.ports_per_knock
    if os.path.exists(output) and not args.force:
        raise ValueError(f"{output} exists; pass --force to replace it")
    done = generate_client(config, args.client, knocks, ports, output, force=args.force)
    print(f"wrote {done.output} for client {args.client}: {knocks} knocks of {ports} ports "
          f"(mode 0600; give it to the client over a secure channel)")
    print(f"server copy: {done.server_copy}")
    print(f"keyspace: pool of {done.pool_size} ports, {ports} per knock: "
          f"{done.ordered:.3g} ordered sequences ({done.ordered}), "
          f"{done.unordered:.3g} unordered sets ({done.unordered})")
    return 0


def _invite(args) -> int:
    from knocker.admin.clients import ClientExists
    from knocker.enrol.invite import invite_client

    config = server_config(args)
    knocks = args.knocks if args.knocks is not None else config.knocks
    ports = args.ports if args.ports is not None else config.ports_per_knock
    try:
        done = invite_client(config, args.client, knocks, ports, args.expires, force=args.force)
    except ClientExists as error:
        raise ValueError(str(error)) from None
    print(done.code)
    print(f"invitation {done.slot} for client {args.client}: {knocks} knocks of {ports} ports; "
          f"single use, {args.expires:g}s; on the client: knocker enroll {done.code} "
          f"--server ENDPOINT", file=sys.stderr)
    return 0


def _duration(text: str) -> float:
    """
    Seconds, or a duration as the console's forms take it (30m, 12h, 2d);
    the range is checked with the rest of the invitation.
    """
    from knocker.console.report import parse_duration

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return float(parse_duration(text))
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _enroll(args) -> int:
    from knocker.client.command import endpoint_problem
    from knocker.enrol import client
    from knocker.enrol.words import parse_code

    slot, words = parse_code(args.code)
    problem = endpoint_problem(args.server)
    if problem is not None:
        raise ValueError(f"--server {args.server}: not a usable endpoint ({problem})")
    if args.output:
        # Checked before the exchange: once it succeeds the code is spent.
        for path in client.output_paths(args.output):
            if os.path.exists(path) and not args.force:
                raise ValueError(f"{path} exists; pass --force to replace it")
            folder = os.path.dirname(os.path.abspath(path))
            if not os.path.isdir(folder):
                from knocker.files import ensure_private_dir

                try:
                    ensure_private_dir(folder)  # 0700, as for the client log
                except OSError as error:
                    raise ValueError(f"{path}: cannot make its folder: {error}") from None
            if not os.access(folder, os.W_OK | os.X_OK):
                raise ValueError(f"{path}: its folder {folder} is not writable")
    result = client.run(args.server, slot, words, args.timeout)
    if result.outcome is not client.Outcome.ENROLLED:
        print(f"knocker enroll: {result.message()}", file=sys.stderr)
        return result.outcome.exit_code
    output = args.output
    if output is None:
        from knocker.core.knockfile import parse_header

        stem = parse_header(result.text, "the enrolled file").client
        output = stem + ".knock"
        if not args.force and any(map(os.path.exists, client.output_paths(output))):
            # The invitation is spent: keep what it brought rather than lose it
            # (or an existing file or configuration).
            output = _kept_name(result.text)
    elif not args.force and any(map(os.path.exists, client.output_paths(output))):
        # Checked before the exchange, it appeared during it: what the spent
        # code brought is kept beside it, and what appeared is left alone.
        kept = os.path.join(os.path.dirname(output), _kept_name(result.text))
        print(f"knocker enroll: {output} (or its .conf) appeared while the code was "
              f"exchanged; keeping the file as {kept} instead", file=sys.stderr)
        output = kept
    try:
        knock_file, conf = client.save(result, args.server, output)
    except OSError as error:
        print(f"knocker enroll: {error}", file=sys.stderr)
        # The invitation is spent: keep what it brought if anywhere can.
        try:
            knock_file, conf = client.save(result, args.server, _kept_name(result.text))
        except OSError as again:
            print(f"knocker enroll: {again}; the file is lost: ask for a new invitation",
                  file=sys.stderr)
            return client.Outcome.FILE_ERROR.exit_code
        print(f"knocker enroll: kept it as {knock_file} (mode 0600) and {conf} instead",
              file=sys.stderr)
        return client.Outcome.FILE_ERROR.exit_code
    print(f"wrote {knock_file} (mode 0600)")
    print(f"wrote {conf}: knocker knock --config {conf}")
    return 0


def _enroll_epilog() -> str:
    from knocker.enrol.client import OUTCOMES

    return "exit status:\n" + "\n".join(
        f"  {o.exit_code:>2}  {o.name}: {o.meaning}" for o in OUTCOMES)


def _status(args) -> int:
    from knocker.admin.clients import status

    config = server_config(args)
    report = status(config)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    where = report["database"] or report["state_dir"]
    print(f"state: {where}  pool: {report['pool_size']} ports")
    for row in report["clients"]:
        print(f"  {row['client']:<24} {row['left']:>7} of {row['knocks']} knocks left"
              + ("  REVOKED: knocks are denied (knocker generate --force for a new file)"
                 if row["revoked"] else ""))
    if not report["clients"]:
        print("  no clients yet: knocker generate CLIENT")
    for key, until in sorted(report["lockouts"].items()):
        who = "everyone (the whole server)" if key == "*" else f"{key} (source)"
        print(f"  locked out: {who} for {until - time.time():.0f}s more")
    if not report["lockouts"]:
        print("  no lockout in force")
    print(f"  pending close actions: {report['pending_closes']}")
    for row in report["invitations"]:
        print(f"  invitation {row['slot']}: {row['client']}, {row['state']}"
              + (f", {row['expires'] - time.time():.0f}s and {row['tries_left']} tries left"
                 if row["state"] == "open" else ""))
    return 0


def _demo(args) -> int:
    from knocker.admin.demo import run_demo

    return run_demo()


def _overrides(args, keys) -> dict[str, str]:
    values = {}
    for key in keys:
        value = getattr(args, key.replace("-", "_"), None)
        if value is not None:
            values[key] = str(value)
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="knocker", description="Port knocking with one-time knocks.")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="create a client's portknock file")
    gen.add_argument("client", help="client id: [a-z0-9][a-z0-9_.-]{0,63}")
    gen.add_argument("--knocks", type=int, help="number of one-time knocks (default: config, 1000)")
    gen.add_argument("--ports", type=int, help="ports per knock (default: config, 6)")
    gen.add_argument("-o", "--output", help="where to write the file (default: CLIENT.knock)")
    gen.add_argument("--config", help=f"server configuration file (default: {DEFAULT_CONFIG})")
    gen.add_argument("--state-dir", help="override state-dir")
    gen.add_argument("--force", action="store_true",
                     help="replace an existing client (new secret) and output file")
    gen.set_defaults(run=_generate)

    # knocker knock reads its own options (knocker.client.command), so that
    # the knock path never loads argparse; this entry only lists it.
    knock = commands.add_parser("knock", help="knock once; exit 0 on OPEN (knocker knock --help)",
                                add_help=False)
    knock.add_argument("arguments", nargs=argparse.REMAINDER)

    # Likewise knocker connect (knocker.client.connect): listed only.
    connect = commands.add_parser(
        "connect", add_help=False,
        help="knock, then relay stdin/stdout to HOST PORT, for ssh's ProxyCommand "
             "(knocker connect --help)")
    connect.add_argument("arguments", nargs=argparse.REMAINDER)

    inv = commands.add_parser("invite", help="create a client and print a one-time code "
                              "for knocker enroll")
    inv.add_argument("client", help="client id: [a-z0-9][a-z0-9_.-]{0,63}")
    inv.add_argument("--expires", type=_duration, default=3600.0,
                     help="how long the code works: seconds, or 30m, 12h, 2d as in the "
                          "console (default 1h, at most 30d)")
    inv.add_argument("--knocks", type=int, help="number of one-time knocks (default: config, 1000)")
    inv.add_argument("--ports", type=int, help="ports per knock (default: config, 6)")
    inv.add_argument("--config", help=f"server configuration file (default: {DEFAULT_CONFIG})")
    inv.add_argument("--state-dir", help="override state-dir")
    inv.add_argument("--force", action="store_true",
                     help="replace an existing client (new secret; its old file stops working)")
    inv.set_defaults(run=_invite)

    enr = commands.add_parser(
        "enroll", help="fetch a portknock file with a code from knocker invite",
        epilog=_enroll_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    enr.add_argument("code", help="the invitation code, e.g. 417-crossover-clockwork-lantern")
    enr.add_argument("--server", required=True,
                     help="the central port: tcp:host=H:port=P or tls:H:P:trustRoots=DIR...")
    enr.add_argument("-o", "--output", help="where to write the file (default: CLIENT.knock); "
                     "the configuration goes beside it, as .conf")
    enr.add_argument("--timeout", type=float, default=30.0,
                     help="seconds for the whole exchange once connected (default 30)")
    enr.add_argument("--force", action="store_true", help="replace existing output files")
    enr.set_defaults(run=_enroll)

    stat = commands.add_parser("status", help="clients, knocks left, lockouts")
    stat.add_argument("--config", help=f"server configuration file (default: {DEFAULT_CONFIG})")
    stat.add_argument("--state-dir", help="override state-dir")
    stat.add_argument("--json", action="store_true", help="print JSON")
    stat.set_defaults(run=_status)

    demo = commands.add_parser("demo", help="one real knock on this machine, server and client")
    demo.set_defaults(run=_demo)

    from knocker.console.cli import add_commands  # (imports nothing heavy)

    add_commands(commands, _on_server_state)
    return parser


def _on_server_state(sub) -> None:
    """
    The options of a command on the daemon's state; its C{run} gets the config.
    """
    sub.add_argument("--config", help=f"server configuration file (default: {DEFAULT_CONFIG})")
    sub.add_argument("--state-dir", help="override state-dir")
    command = sub.get_default("run")
    sub.set_defaults(run=lambda args: command(server_config(args), args))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] in (["knock"], ["connect"]):
        from knocker.main import main as entry  # the one place that routes them

        return entry(argv)
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (ConfigError, KnockFileError, PrivateFileError, ValueError) as error:
        print(f"knocker {args.command}: {error}", file=sys.stderr)
        return USAGE_ERROR
    except OSError as error:
        print(f"knocker {args.command}: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        import sqlite3

        from knocker.state.interface import StateError

        if not isinstance(error, (sqlite3.Error, StateError)):
            raise
        print(f"knocker {args.command}: the state{_state_named(args, error)}: {error}",
              file=sys.stderr)
        return 1


def _kept_name(text: str) -> str:
    """A name of its own, in the working directory, for an enrolled file."""
    from knocker.core.knockfile import parse_header

    return f"{parse_header(text, 'the enrolled file').client}.{int(time.time())}.knock"


def _state_named(args, error) -> str:
    """" (PATH)" of the SQLite state a bare sqlite3 error came from, or ""."""
    import sqlite3

    if not isinstance(error, sqlite3.Error):
        return ""  # a StateError names what it is about itself
    try:
        config = server_config(args)
    except Exception:
        return ""
    if config.database:
        return ""
    return f" ({os.path.join(config.state_dir, 'state.sqlite')})"


if __name__ == "__main__":
    sys.exit(main())
