"""
Entry point of the C{knocker} command.

C{knocker knock} goes straight to L{knocker.client.command}, and
C{knocker connect} (the knock, then a relay for ssh's C{ProxyCommand}) to
L{knocker.client.connect}: both import little (no argparse, no reactor)
because their start-up time is part of every knock; everything else goes to
L{knocker.admin.cli}.
"""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["knock"]:
        from knocker.client.command import knock_command

        return knock_command(argv[1:])
    if argv[:1] == ["connect"]:
        from knocker.client.connect import connect_command

        return connect_command(argv[1:])
    from knocker.admin.cli import main as full

    return full(argv)


if __name__ == "__main__":
    sys.exit(main())
