#!/usr/bin/env bash
# Install everything the whole test suite needs, then run it.
#
# As root (CI, or a throwaway machine) it also installs the Debian packages
# the real-network tests use; without root those tests skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."

# systemd: systemd-analyze for the unit's tests; logrotate: etc/knocker.logrotate;
# python3-venv, util-linux, passwd: README's installation (tests/network/test_deploy.py)
# chromium, chromium-driver: the console in a real browser (tests/processes/test_console_browser.py)
# postgresql: the throwaway clusters of a fleet's tests (tests/helpers/postgres.py)
packages="iproute2 nftables nmap faketime openssh-server openssh-client systemd logrotate python3-venv util-linux passwd chromium chromium-driver postgresql"
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=""
    for package in $packages; do
        dpkg -s "$package" >/dev/null 2>&1 || missing="$missing $package"
    done
    if [ -n "$missing" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing >/dev/null
    fi
fi

python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check '.[test,postgresql]'
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
