"""
The pure core: knock files, pool, handshakes, the tracker, configuration.

Nothing here does I/O or imports the reactor; time is given.

Two things every side of the protocol shares live in this file rather than
in modules of their own: the protocol's tag and its first line, and the
value-object base class.  Importing a module costs C{knocker knock} about
60-100 microseconds of import machinery before its body runs, and any
module of the core brings this package in anyway.
"""

MAGIC = "KNOCKER/1"


def format_hello(client: str) -> bytes:
    """
    HELLO, the protocol's first line (docs/spec.md section 4).  Apart from
    L{knocker.core.handshake} so that C{knocker knock} can say it before
    the rest of the protocol loads: the server's answer then travels while
    the client imports (see L{knocker.client.tcp.EarlyHello}).
    """
    return f"{MAGIC} HELLO {client}\n".encode("ascii")


class Record:
    """
    Small immutable values for the modules on the client's start-up path.

    C{knocker knock} is measured from process start to the door being open,
    in milliseconds; importing attrs (or dataclasses, which pulls in
    inspect) costs more than the whole knock.  So the portknock file, the
    protocol messages and the configuration use this base class: fields
    named in C{__slots__}, set once in C{__init__}, compared and shown by
    value.
    """

    __slots__ = ()
    _fields: tuple = ()
    _defaults: dict = {}

    def __init__(self, *args, **kwargs):
        fields = self._fields
        if len(args) > len(fields):
            raise TypeError(f"{type(self).__name__} takes at most {len(fields)} values")
        values = dict(zip(fields, args))
        for name, value in kwargs.items():
            if name not in fields or name in values:
                raise TypeError(f"{type(self).__name__}: bad or repeated field {name!r}")
            values[name] = value
        for name in fields:
            if name in values:
                value = values[name]
            elif name in self._defaults:
                value = self._defaults[name]
            else:
                raise TypeError(f"{type(self).__name__}: missing field {name!r}")
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is immutable")

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self._fields)

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash((type(self).__name__,) + self._values())

    def __repr__(self):
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({inner})"

    def replace(self, **changes):
        """
        A copy with some fields changed.
        """
        values = {name: getattr(self, name) for name in self._fields}
        values.update(changes)
        return type(self)(**values)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # A subclass that only adds methods (empty __slots__) keeps its
        # parent's fields.
        if cls.__slots__:
            cls._fields = cls.__slots__
        cls.__match_args__ = cls._fields
