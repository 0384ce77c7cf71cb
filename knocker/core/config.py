"""
Configuration (docs/spec.md section 9): INI text in, frozen config out.

L{parse_server_config} and L{parse_client_config} are pure; C{load_*} read
the file.  Command-line overrides go through the same checks as the file, so
every bad key or value is a L{ConfigError} naming where it came from, the
key, and what is allowed.  Relative paths in a file are taken relative to
that file's folder (a daemon's working directory is rarely the operator's);
relative paths on the command line, relative to the working directory.
"""

import os

from knocker.core.record import Record


class ConfigError(ValueError):
    """
    A bad configuration; the message names the source, key and what is allowed.
    """


class ServerConfig(Record):
    __slots__ = (
        "central", "interface", "state_dir", "pool_size", "pool_range", "knocks",
        "ports_per_knock", "knock_window", "lockout", "lockout_scope", "max_concurrent",
        "max_connections", "handshake_timeout", "on_success", "on_close", "open_duration",
        "script_timeout", "audit_log",
    )
    _defaults = {
        "central": "tcp:7000:interface=127.0.0.1",
        "interface": "127.0.0.1",
        "state_dir": "knocker-state",
        "pool_size": 100,
        "pool_range": (10000, 32000),
        "knocks": 1000,
        "ports_per_knock": 6,
        "knock_window": 10,
        "lockout": 60.0,
        "lockout_scope": "global",
        "max_concurrent": 1,
        "max_connections": 64,
        "handshake_timeout": 5.0,
        "on_success": None,
        "on_close": None,
        "open_duration": 300.0,
        "script_timeout": 10.0,
        "audit_log": None,
    }

    @property
    def audit_path(self) -> str:
        return self.audit_log or os.path.join(self.state_dir, "audit.log")


class ClientConfig(Record):
    __slots__ = ("server", "knock_file", "log_file", "timeout", "connect_timeout", "busy_retries")
    _defaults = {
        "server": "tcp:host=127.0.0.1:port=7000",
        "knock_file": None,
        "log_file": "~/.knocker/client.log",
        "timeout": 60.0,
        "connect_timeout": 5.0,
        "busy_retries": 3,
    }


Parser = "Callable[[str], object]"


def _number(kind, low, high) -> tuple[Parser, str]:
    allowed = f"a {'whole ' if kind is int else ''}number from {low} to {high}"

    def parse(text: str):
        if not text or not all(char in "0123456789." for char in text):
            raise ValueError(allowed)  # no signs, exponents, underscores or "nan"
        try:
            value = kind(text)
        except ValueError:
            raise ValueError(allowed) from None
        if not low <= value <= high or value != value:
            raise ValueError(allowed)
        return value

    return parse, allowed


def _choice(*names: str) -> tuple[Parser, str]:
    allowed = "one of " + ", ".join(names)

    def parse(text: str):
        if text not in names:
            raise ValueError(allowed)
        return text

    return parse, allowed


def _port_range(text: str) -> tuple[int, int]:
    allowed = "LOW-HIGH, two ports from 1 to 65535 with LOW <= HIGH"
    low, sep, high = (part.strip() for part in text.partition("-"))
    if not (sep and low.isdigit() and high.isdigit() and low.isascii() and high.isascii()):
        raise ValueError(allowed)
    low, high = int(low), int(high)
    if not 1 <= low <= high <= 65535:
        raise ValueError(allowed)
    return low, high


def _endpoint(text: str) -> str:
    kind, sep, rest = text.partition(":")
    if not (sep and kind.isalnum() and kind.isascii() and rest) or any(c.isspace() for c in text):
        raise ValueError("a Twisted endpoint string such as tcp:7000")
    return text


def _address(text: str) -> str:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError("an IPv4 or IPv6 address such as 0.0.0.0 or ::") from None
    return text


def _text(text: str) -> str:
    if not text:
        raise ValueError("a non-empty value")
    return text


_PATH = (_text, "a path")
_SERVER_KEYS: dict[str, tuple[str, tuple[Parser, str], bool]] = {
    # key: (attribute, (parser, what is allowed), is a path)
    "central": ("central", (_endpoint, "a Twisted server endpoint string such as tcp:7000"), False),
    "interface": ("interface", (_address, "an IPv4 or IPv6 address"), False),
    "state-dir": ("state_dir", _PATH, True),
    "pool-size": ("pool_size", _number(int, 1, 30000), False),
    "pool-range": ("pool_range", (_port_range, "LOW-HIGH"), False),
    "knocks": ("knocks", _number(int, 1, 1_000_000), False),
    "ports-per-knock": ("ports_per_knock", _number(int, 1, 64), False),
    "knock-window": ("knock_window", _number(int, 1, 3600), False),
    "lockout": ("lockout", _number(float, 0, 86400), False),
    "lockout-scope": ("lockout_scope", _choice("global", "source"), False),
    "max-concurrent": ("max_concurrent", _number(int, 1, 10000), False),
    "max-connections": ("max_connections", _number(int, 1, 100000), False),
    "handshake-timeout": ("handshake_timeout", _number(float, 0.1, 300), False),
    "on-success": ("on_success", _PATH, True),
    "on-close": ("on_close", _PATH, True),
    "open-duration": ("open_duration", _number(float, 0, 31_536_000), False),
    "script-timeout": ("script_timeout", _number(float, 0.1, 3600), False),
    "audit-log": ("audit_log", _PATH, True),
}
_CLIENT_KEYS: dict[str, tuple[str, tuple[Parser, str], bool]] = {
    "server": ("server", (_endpoint, "a Twisted client endpoint string such as tcp:host=example.org:port=7000"), False),
    "knock-file": ("knock_file", _PATH, True),
    "log-file": ("log_file", _PATH, True),
    "timeout": ("timeout", _number(float, 1, 3600), False),
    "connect-timeout": ("connect_timeout", _number(float, 0.1, 300), False),
    "busy-retries": ("busy_retries", _number(int, 0, 100), False),
}
SERVER_KEYS = tuple(_SERVER_KEYS)
CLIENT_KEYS = tuple(_CLIENT_KEYS)


def parse_server_config(
    text: str = "", source: str = "<defaults>", overrides: dict[str, str] | None = None
) -> ServerConfig:
    config = _parse(text, source, "server", _SERVER_KEYS, ServerConfig(), overrides)
    if overrides and {"pool-size", "pool-range", "ports-per-knock"} & set(overrides):
        source = "command line" if source == "<defaults>" else f"{source} and command line"
    low, high = config.pool_range
    if config.pool_size > high - low + 1:
        raise ConfigError(
            f"{source}: [server] pool-size = {config.pool_size} does not fit in "
            f"pool-range = {low}-{high}; allowed: at most {high - low + 1}"
        )
    if config.ports_per_knock > config.pool_size:
        raise ConfigError(
            f"{source}: [server] ports-per-knock = {config.ports_per_knock} is more "
            f"than pool-size = {config.pool_size}"
        )
    return config


def parse_client_config(
    text: str = "", source: str = "<defaults>", overrides: dict[str, str] | None = None
) -> ClientConfig:
    return _parse(text, source, "client", _CLIENT_KEYS, ClientConfig(), overrides)


def load_server_config(path: str | None, overrides: dict[str, str] | None = None) -> ServerConfig:
    return parse_server_config(*_read(path), overrides=overrides)


def load_client_config(path: str | None, overrides: dict[str, str] | None = None) -> ClientConfig:
    return parse_client_config(*_read(path), overrides=overrides)


def _read(path: str | None) -> tuple[str, str]:
    if path is None:
        return "", "<defaults>"
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read(), path
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error}") from None


def _parse(text, source, section, keys, defaults, overrides):
    values = {}
    if text:
        values = _parse_file(text, source, section, keys)
    for key, raw in (overrides or {}).items():
        values[key] = _value("command line", section, keys, key, raw.strip(), None)
    return defaults.replace(**{keys[key][0]: value for key, value in values.items()})


def _parse_file(text, source, section, keys):
    import configparser  # only when there is a file: it costs start-up time

    # No DEFAULT section: a stray [DEFAULT] would otherwise be merged silently.
    parser = configparser.ConfigParser(interpolation=None, strict=True, default_section="\0")
    parser.optionxform = str  # keys are case-sensitive: "Lockout" is a typo
    try:
        parser.read_string(text, source=source)
    except configparser.Error as error:
        raise ConfigError(f"{source}: not a valid INI file: {error}") from None
    extra = [name for name in parser.sections() if name != section]
    if extra:
        raise ConfigError(
            f"{source}: unknown section [{extra[0]}]; allowed: [{section}]"
        )
    base = os.path.dirname(os.path.abspath(source)) if source != "<defaults>" else None
    values = {}
    if parser.has_section(section):
        for key, raw in parser.items(section):
            values[key] = _value(source, section, keys, key, raw.strip(), base)
    return values


def _value(source, section, keys, key, raw, base):
    if key not in keys:
        raise ConfigError(
            f"{source}: [{section}] unknown key {key!r}; allowed: {', '.join(keys)}"
        )
    _, (parse, allowed), is_path = keys[key]
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigError(
            f"{source}: [{section}] {key} = {raw!r} is not allowed; allowed: {allowed}"
        ) from None
    if is_path:
        value = os.path.expanduser(value)
        if base is not None and not os.path.isabs(value):
            value = os.path.join(base, value)
    return value

