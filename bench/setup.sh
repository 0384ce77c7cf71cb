#!/usr/bin/env bash
# Install what the peer benchmarks need, only if it is missing, and build the
# small C helpers. Safe to run again: every step checks before it acts.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"

# Debian package -> a program it provides, so a present program skips apt.
declare -A want=(
    [knockd]=/usr/sbin/knockd
    [fwknop-server]=/usr/sbin/fwknopd
    [fwknop-client]=/usr/bin/fwknop
    [gcc]=/usr/bin/gcc
    [libc6-dev]=/usr/include/stdio.h
    # peers.py --netns and door.py: namespaces, a veth pair, an nftables door
    [iproute2]=/usr/sbin/ip
    [nftables]=/usr/sbin/nft
    # ssh_door.py: a real sshd behind the door, and ssh
    [openssh-server]=/usr/sbin/sshd
    [openssh-client]=/usr/bin/ssh
)
missing=()
for pkg in "${!want[@]}"; do
    [ -e "${want[$pkg]}" ] || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "setup.sh: need root to install: ${missing[*]}" >&2
        exit 1
    fi
    echo "setup.sh: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's postinst may try to start the daemons; policy-rc.d forbids it
    # so nothing listens outside the benchmark's own control.
    prc=/usr/sbin/policy-rc.d
    made_prc=0
    if [ ! -e "$prc" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$prc"; chmod 755 "$prc"; made_prc=1
        trap 'rm -f "$prc"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}"
    if [ "$made_prc" -eq 1 ]; then rm -f "$prc"; fi
fi

# The C helpers (marker, accept_loop, flood) go to bench/build/.
python3 "$here/common.py" build

# knocker itself, installed from this tree into the project's venv as a user
# would have it (compiled bytecode, the twistd plugins, the knocker script).
repo="$(cd "$here/.." && pwd)"
[ -x "$repo/.venv/bin/python" ] || python3 -m venv "$repo/.venv"
"$repo/.venv/bin/pip" install -q --disable-pip-version-check "$repo"
# matplotlib draws the plot in docs/benchmarks.md (bench/report.py).
"$repo/.venv/bin/python" -c "import matplotlib" 2>/dev/null ||
    "$repo/.venv/bin/pip" install -q --disable-pip-version-check matplotlib
