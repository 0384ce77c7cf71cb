"""
The built-in success action: it only says what a real action would do.

Used when C{on-success} is not set, so a first run shows a whole knock
without touching the firewall.  Run as C{python -m knocker.daemon.logaction IP
CLIENT INDEX}.
"""

import sys


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print("usage: python -m knocker.daemon.logaction CLIENT-IP CLIENT-ID KNOCK-NUMBER", file=sys.stderr)
        return 2
    _, ip, client, index = argv
    print(f"knock {index} of {client} from {ip} accepted; "
          "no on-success program is configured, so nothing was opened")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
