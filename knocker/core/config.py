"""
Configuration (docs/spec.md section 9): INI text in, frozen config out.

This module holds the file format, the rules values are checked by, and
the client's keys; the daemon's keys are in L{knocker.core.serverconfig}.
The split is for start-up time: C{knocker knock --config} reads this on
every knock, and the daemon's forty keys cost it 0.4 ms it never uses.

L{parse_client_config} is pure; C{load_client_config} reads the file.
Command-line overrides go through the same checks as the file, so
every bad key or value is a L{ConfigError} naming where it came from, the
key, and what is allowed.  Relative paths in a file are taken relative to
that file's folder (a daemon's working directory is rarely the operator's);
relative paths on the command line, relative to the working directory.
"""

import os

from knocker.core import Record


class ConfigError(ValueError):
    """
    A bad configuration; the message names the source, key and what is allowed.

    A password in it (a database URI's user part, C{password=}) is masked,
    wherever the text it quotes came from: a value that ran on from the
    line above, a comment, configparser's own message.  The message goes
    to standard error and the journal.
    """

    def __init__(self, message: str = ""):
        if "://" in message or "password" in message.lower():
            message = _masked(message)
        super().__init__(message)


def _masked(text: str) -> str:
    import re  # only for such an error: a knock's start-up does without re

    text = re.sub(r"(\w+://[^\s/@'\"]*?:)[^\s@'\"]*@", r"\1***@", text)
    return re.sub(r"(password\s*=\s*)[^\s&'\"]+", r"\1***", text, flags=re.IGNORECASE)


def refused(program: str, problem) -> SystemExit:
    """
    What a twistd plugin raises for settings it cannot start with: exit
    status 1 and the problem alone on stderr.  A C{UsageError} would have
    twistd print its eighty lines of options first and the problem last,
    on stdout; that stays for a mistyped option, where the list helps.
    """
    return SystemExit(f"{program}: {problem}")


Parser = "Callable[[str], object]"


# Rules: a parser and the words for what it allows, for L{Key}.


def number(kind, low, high) -> tuple[Parser, str]:
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


def choice(*names: str) -> tuple[Parser, str]:
    allowed = "one of " + ", ".join(names)

    def parse(text: str):
        if text not in names:
            raise ValueError(allowed)
        return text

    return parse, allowed


def endpoint(text: str) -> str:
    kind, sep, rest = text.partition(":")
    if not (sep and kind.isalnum() and kind.isascii() and rest) or any(c.isspace() for c in text):
        raise ValueError("a Twisted endpoint string such as tcp:7000")
    return text


def endpoints(text: str) -> str:
    """
    One endpoint, or several separated by spaces or newlines (a fleet's
    gateways, tried in turn): kept as one space-separated string.
    """
    items = text.split()
    if not items:
        raise ValueError("an endpoint")
    for item in items:
        endpoint(item)
    return " ".join(items)


def nonempty(text: str) -> str:
    if not text:
        raise ValueError("a non-empty value")
    return text


class Key:
    """
    One configuration key, declared once: its name in the file (and as
    C{--name} on the command line), its default, how its text is parsed and
    what is allowed (for the error message), whether it is a path,
    whether it is a list (which may go on over indented lines), and whether
    its value may hold a secret (a database URI's password), which an error
    message then does not repeat.
    """

    __slots__ = ("name", "attribute", "default", "parse", "allowed", "is_path", "is_list",
                 "secret")

    def __init__(self, name: str, default, rule: tuple[Parser, str], is_path: bool = False,
                 is_list: bool = False, secret: bool = False):
        self.name = name
        self.attribute = name.replace("-", "_")
        self.default = default
        self.parse, self.allowed = rule
        self.is_path = is_path
        self.is_list = is_list
        self.secret = secret


def path(text: str) -> str:
    if not text or "\0" in text:
        raise ValueError("a path")
    return text


PATH = (path, "a path (not empty, no NUL)")

CLIENT_TABLE = (
    Key("server", "tcp:host=127.0.0.1:port=7000",
        (endpoints, "a Twisted client endpoint string such as tcp:host=example.org:port=7000, "
                    "or several separated by spaces or newlines"), is_list=True),
    Key("knock-file", None, PATH, is_path=True),
    Key("log-file", "~/.knocker/client.log", PATH, is_path=True),
    Key("timeout", 60.0, number(float, 1, 3600)),
    Key("connect-timeout", 5.0, number(float, 0.1, 300)),
    Key("busy-retries", 3, number(int, 0, 100)),
)


def record_type(name: str, table: tuple[Key, ...]) -> type:
    """
    A L{Record} type with one field per key of C{table}, and its defaults.
    """
    return type(name, (Record,), {
        "__slots__": tuple(key.attribute for key in table),
        "_defaults": {key.attribute: key.default for key in table},
    })


class ClientConfig(record_type("ClientFields", CLIENT_TABLE)):
    """
    A client's settings (C{[client]}), one attribute per key.
    """

    __slots__ = ()


_CLIENT_KEYS = {key.name: key for key in CLIENT_TABLE}
CLIENT_KEYS = tuple(_CLIENT_KEYS)


def parse_client_config(
    text: str = "", source: str = "<defaults>", overrides: dict[str, str] | None = None
) -> ClientConfig:
    return parse_section(text, source, "client", _CLIENT_KEYS, ClientConfig(), overrides)


def load_client_config(path: str | None, overrides: dict[str, str] | None = None) -> ClientConfig:
    return parse_client_config(*read_file(path), overrides=overrides)


def read_file(path: str | None) -> tuple[str, str]:
    """C{(text, source)} of the file at C{path}; no path, no text."""
    if path is None:
        return "", "<defaults>"
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: cannot read the configuration: {error}") from None
    # A byte-order mark, which some Windows editors write first, is no
    # part of the text (stripped here rather than with the utf-8-sig codec,
    # a module more to import on every knock).
    return text[1:] if text[:1] == "\ufeff" else text, path


def parse_section(text, source, section, keys, defaults, overrides):
    """
    C{defaults} with the keys of C{[section]} in C{text}, then
    C{overrides}, each parsed by its L{Key} in C{keys} (by name).
    """
    values = {}
    if text:
        values = _parse_file(text, source, section, keys)
    for key, raw in (overrides or {}).items():
        values[key] = _value("command line", section, keys, key, raw.strip(), None)
    return defaults.replace(**{keys[key].attribute: value for key, value in values.items()})


def simple_ini(text: str, section: str) -> dict[str, str] | None:
    """
    The C{key: value} lines of C{[section]} for the plain INI the example
    files use (comments, blank lines, one section header, C{key = value}),
    or C{None} for anything else, which then goes to configparser.

    C{knocker knock --config} reads its file on every knock, and importing
    configparser (and re with it) costs about 7 ms of a knock's 20.  This
    reader accepts only text on which it gives what configparser would,
    and declines the rest (tests/core/test_config.py holds the two to each
    other with hypothesis), so errors still come from one parser.
    """
    values: dict[str, str] = {}
    seen_header = False
    for line in text.split("\n"):
        if not line or line.isspace():
            continue
        if not _PLAIN.issuperset(line) or line[0] in " \t":
            return None
        if line[0] in "#;":
            continue
        if line[0] == "[":
            if line.rstrip() != f"[{section}]" or seen_header:
                return None
            seen_header = True
            continue
        key, equals, value = line.partition("=")
        key = key.strip()
        if not (equals and seen_header and key and _KEY_CHARS.issuperset(key)) or key in values:
            return None
        values[key] = value.strip()
    return values


_KEY_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
_PLAIN = frozenset(chr(code) for code in range(0x20, 0x7F)) | {"\t"}


def _parse_file(text, source, section, keys):
    simple = simple_ini(text, section)
    if simple is not None:
        base = os.path.dirname(os.path.abspath(source))
        return {key: _value(source, section, keys, key, raw, base)
                for key, raw in simple.items()}
    import configparser  # only for files beyond the plain form: it costs start-up time

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
    declared = keys[key]
    shown = "(the value, not shown here: it may hold a password)" if declared.secret else repr(raw)
    if "\n" in raw and not declared.is_list:
        raise ConfigError(
            f"{source}: [{section}] {key} = {shown} spans more than one line: an indented "
            f"line continues the value above it; start the line at the margin"
        )
    if " #" in raw or "\t#" in raw or " ;" in raw or "\t;" in raw:
        # configparser keeps it as part of the value: a path would name
        # another file, and a number would be refused with a puzzling reason.
        raise ConfigError(
            f"{source}: [{section}] {key} = {shown} has a comment after it, which would be "
            f"read as part of the value; put comments on lines of their own"
        )
    try:
        value = declared.parse(raw)
    except ValueError:
        raise ConfigError(
            f"{source}: [{section}] {key} = {shown} is not allowed; allowed: {declared.allowed}"
        ) from None
    if declared.is_path:
        value = os.path.expanduser(value)
        if base is not None and not os.path.isabs(value):
            value = os.path.join(base, value)
    return value

