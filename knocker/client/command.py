"""
C{knocker knock}: its options, the fastest driver for the endpoint, the
verdict printed and returned as the exit status.

Every import here is paid by every knock, so this module and what it loads
at the top stay small; the options are read by L{parse_knock_args}, the one
parser for the client's keys (C{twistd knockclient} uses it too).
"""

import sys
import time

from knocker.client.tcp import plain_tcp

USAGE = ("usage: knocker knock [--config FILE] [--server ENDPOINT] [--knock-file FILE] "
         "[--KEY VALUE ...] [-v]")
USAGE_ERROR = 2
# How long the command waits for the CHALLENGE before it loads the rest of
# the knock: past this the server is slow or far, and loading it first
# costs nothing.
EARLY_ANSWER_WAIT = 1.0


def help_text() -> str:
    from knocker.client.knock import OUTCOMES
    from knocker.core.config import CLIENT_TABLE

    lines = [USAGE, "", "Knock once.  Any key of the [client] section may be given as --KEY VALUE:"]
    lines += [f"  --{key.name:<16} {key.allowed} (default {key.default})" for key in CLIENT_TABLE]
    lines += ["", "Exit status:"]
    lines += [f"  {outcome.exit_code:>2}  {outcome.name}: {outcome.meaning}" for outcome in OUTCOMES]
    return "\n".join(lines)


def endpoint_problem(endpoint: str) -> str | None:
    """
    Why no driver can use C{endpoint}, or C{None}: a mistake in the
    configuration (exit 2), not a server out of reach (exit 3).  Only an
    endpoint the blocking driver leaves to Twisted pays for loading it.
    """
    plain = plain_tcp(endpoint)
    if plain is not None:
        host, port = plain
        if not 0 < port < 65536:
            return f"port {port} is not 1-65535"
        if not host.isascii():
            return "the host name is not ASCII (give its xn-- form)"
        return None
    if endpoint.split(":", 1)[0].lower() == "ssl":
        # Twisted's ssl: client endpoint checks no certificate unless told
        # to: encryption to whoever answers, an impostor included.
        return ("ssl: endpoints do not check the server's certificate; use "
                "tls:host=HOST:port=PORT:trustRoots=FOLDER")
    from knocker.core.serverconfig import endpoint_fields

    try:
        # First, as Twisted's parser fails on a trailing backslash with a
        # RuntimeError (a generator's StopIteration), a traceback.
        fields = endpoint_fields(endpoint)[1:]
    except ValueError as failure:
        return str(failure)
    from twisted.internet import endpoints, reactor

    try:
        endpoints.clientFromString(reactor, endpoint)
    except Exception as failure:  # whatever a parser or a TLS option raises
        return str(failure) or type(failure).__name__
    kind = endpoint.split(":", 1)[0]
    if kind.lower() not in ("tcp", "tls"):  # (Twisted takes the kind in any case)
        # unix:, say: the hits go to the central connection's peer address
        # over TCP, and such a connection has none.
        return f"a {kind}: endpoint has no TCP address for the knock's hits; use tcp: or tls:"
    # Twisted takes any number as a port, and fails only when it connects
    # (OverflowError, a traceback): said here, as for a plain endpoint.
    named = [field[1] for field in fields if len(field) == 2 and field[0] == "port"]
    positional = [field[0] for field in fields if len(field) == 1]
    # tcp:HOST:PORT, tls:HOST:PORT: the second field without a name.
    port = (named or positional[1:2] or [None])[0]
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return f"port {port} is not 1-65535"
    return None


def check_servers(config):
    """
    C{config} with only the endpoints of C{server} a driver can use, having
    said which others a fleet's knock passes over.

    @raise ValueError: none can be used (a mistake in the configuration,
        not a server out of reach); names them.
    """
    endpoints = config.server.split()
    usable, problems = [], []
    for endpoint in endpoints:
        problem = endpoint_problem(endpoint)
        if problem is None:
            usable.append(endpoint)
        else:
            problems.append(f"server = {endpoint}: not a usable endpoint ({problem})")
    if not usable:
        raise ValueError("; ".join(problems))
    for problem in problems:
        print(f"knocker: {problem}; passed over", file=sys.stderr)
    return config.replace(server=" ".join(usable)) if problems else config


def load_knockfile(config):
    """
    The client's portknock file named by C{config}: mode 0600 and its header
    checked now, its knocks during the handshake (see
    L{knocker.core.knockfile.KnockFileText}).

    @raise ValueError: no file set, unsafe, unreadable or malformed; the
        message names the file.
    """
    from knocker.core.knockfile import KnockFileText
    from knocker.files import read_private_identified

    if config.knock_file is None:
        raise ValueError(
            "no portknock file: set knock-file in the [client] section or pass --knock-file"
        )
    try:
        text, identity = read_private_identified(config.knock_file)
        return KnockFileText(text, config.knock_file, identity)
    except OSError as error:
        raise ValueError(f"{config.knock_file}: cannot read: {error.strerror}") from None


def run_knock(config, knockfile, verbose: bool = False):
    """
    Knock once with the fastest driver that handles C{config.server}.

    With plain TCP, HELLO goes to the first server before the protocol is
    imported, and the PROOF before the driver and the knock's coroutine
    are: each import runs while the server works on the line before it.
    """
    endpoints = config.server.split()
    if all(plain_tcp(endpoint) is not None for endpoint in endpoints):
        from knocker.client.tcp import EarlyHello
        from knocker.core import format_hello

        early = EarlyHello(endpoints[0], format_hello(knockfile.client),
                           min(config.connect_timeout, config.timeout))
        try:
            from knocker.core import handshake as hs

            # At most half of what is left: a CHALLENGE slower than that
            # leaves the rest to the knock, which then reports as ever.
            left = config.timeout - (time.monotonic() - early.began)
            early.answer(hs.ClientHandshake(knockfile), hs.MAX_LINE,
                         min(EARLY_ANSWER_WAIT, left / 2), left)
            from knocker.client.blocking_driver import BlockingDriver
            from knocker.client.knock import knock, run_blocking

            return run_blocking(knock(BlockingDriver(verbose, early), config, knockfile,
                                      began=early.began))
        finally:
            early.close()
    from knocker.client.knock import knock
    from knocker.client.twisted_driver import run_in_reactor

    return run_in_reactor(lambda driver: knock(driver, config, knockfile), verbose)


def parse_knock_args(argv: list[str]) -> tuple[str | None, dict[str, str], bool]:
    """
    C{--KEY VALUE} and C{--KEY=VALUE} for C{--config} and every client key.

    @raise ValueError: an unknown option or a missing value.
    """
    from knocker.core.config import CLIENT_KEYS

    config, overrides, verbose = None, {}, False
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg in ("-v", "--verbose"):
            verbose = True
            continue
        name, sep, value = arg.partition("=")
        key = name[2:] if name.startswith("--") else None
        if key != "config" and key not in CLIENT_KEYS:
            raise ValueError(f"unknown option {arg!r}\n{USAGE}")
        if not sep:
            if not args:
                raise ValueError(f"option {name} needs a value\n{USAGE}")
            value = args.pop(0)
        if key == "config":
            config = value
        else:
            overrides[key] = value
    return config, overrides, verbose


def knock_command(argv: list[str]) -> int:
    """
    C{knocker knock ...}: print the outcome, return its exit status.
    """
    from knocker.core.config import ConfigError, load_client_config

    if {"-h", "--help"} & set(argv):
        print(help_text())
        return 0
    try:
        path, overrides, verbose = parse_knock_args(argv)
        config = check_servers(load_client_config(path, overrides))
        knockfile = load_knockfile(config)
    except (ConfigError, ValueError) as error:
        print(f"knocker knock: {error}", file=sys.stderr)
        return USAGE_ERROR
    result = run_knock(config, knockfile, verbose)
    stream = sys.stdout if result.outcome.exit_code == 0 else sys.stderr
    where = f"knock {result.index}" if result.index else "no knock granted"
    print(f"knocker: {result.message()} [{where}, {result.server or config.server}]", file=stream)
    return result.outcome.exit_code
