#!/bin/sh
# Install the Debian packages ldm needs to build and test, when they are missing.
set -e
# clang and libclang-rt-14-dev (libFuzzer, ASan and UBSan runtimes for clang): the fuzz
# harnesses that `make test` builds and runs (tests/cli_fuzz.sh, tests/fuzz/README.md).
PKGS="build-essential pkg-config libarchive-dev libarchive-tools zlib1g-dev libsqlite3-dev sqlite3 libpng-dev libjansson-dev libutf8proc-dev libopenblas-dev libjpeg62-turbo-dev clang libclang-rt-14-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    echo "installing:$missing"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO=sudo
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends $missing
fi
