#!/bin/sh
# Install the Debian packages ldm needs to build and test, when they are missing.
# The Slurm and munge packages are for tests/cli_slurm.sh, which starts its own private
# single-node cluster; their daemons are not started by the installation (a temporary
# policy-rc.d says so where the system has none).
set -e
# clang and libclang-rt-14-dev (libFuzzer, ASan and UBSan runtimes for clang): the fuzz
# harnesses that `make test` builds and runs (tests/cli_fuzz.sh, tests/fuzz/README.md).
PKGS="build-essential pkg-config libarchive-dev libarchive-tools zlib1g-dev libsqlite3-dev sqlite3 libpng-dev libjansson-dev libutf8proc-dev libopenblas-dev libjpeg62-turbo-dev clang libclang-rt-14-dev"
PKGS="$PKGS slurmctld slurmd slurm-client munge"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -q
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\n# ldm scripts/install-deps.sh: no daemon starts while packages are installed\nexit 101\n' |
            $SUDO tee "$policy" > /dev/null
        $SUDO chmod 755 "$policy"
    fi
    rc=0
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing || rc=$?
    [ -n "$policy" ] && $SUDO rm -f "$policy"
    exit $rc
fi
