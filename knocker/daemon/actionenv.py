"""
The environment of the administrator's programs (docs/spec.md section 6):
made from scratch for each action, never inherited whole.

Every action gets C{PATH} (the daemon's, or a standard one) and the
variables the C{action-env} key names, with the values the daemon's own
environment holds for them (unset ones are left out); on-success and
on-close also get the knock's C{KNOCKER_CLIENT_IP}, C{KNOCKER_CLIENT} and
C{KNOCKER_INDEX}.  Nothing else of the daemon's environment reaches them.
"""

import os

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def passed_env(names, environ=None) -> dict[str, str]:
    """
    The values the daemon's environment (C{environ}, default C{os.environ})
    holds for C{names} (the C{action-env} key), those that are set: what
    the daemon passes on to every action, and nothing else of its own.
    """
    environ = os.environ if environ is None else environ
    return {name: environ[name] for name in names if name in environ}


def check_env(passed: dict[str, str] | None = None) -> dict[str, str]:
    """
    The whole environment of an action that concerns no knock (on-check):
    C{PATH} (the daemon's, or a standard one) and the C{action-env} values.
    """
    env = {"PATH": os.environ.get("PATH", DEFAULT_PATH)}
    env.update(passed or {})
    return env


def action_env(ip: str, client: str, index: int,
               passed: dict[str, str] | None = None) -> dict[str, str]:
    """
    The whole environment of on-success and on-close: L{check_env}, and
    the knock's C{KNOCKER_CLIENT_IP}, C{KNOCKER_CLIENT}, C{KNOCKER_INDEX}.
    """
    env = check_env(passed)
    env.update({
        "KNOCKER_CLIENT_IP": ip,
        "KNOCKER_CLIENT": client,
        "KNOCKER_INDEX": str(index),
    })
    return env
