"""
Entry point of the C{knocker} command.

C{knocker knock} goes straight to L{knocker.quick}, which imports little
(no argparse, no reactor) because its start-up time is part of every knock;
everything else, and C{knocker knock --help}, goes to L{knocker.cli}.
"""

import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["knock"] and not {"-h", "--help"} & set(argv):
        from knocker.quick import knock_command

        return knock_command(argv[1:])
    from knocker.cli import main as full

    return full(argv)


if __name__ == "__main__":
    sys.exit(main())
