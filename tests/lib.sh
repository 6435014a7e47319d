# tests/lib.sh - helpers for command-line tests (sourced by tests/cli_*.sh).
# Each check prints FAIL lines with the reason; `finish` prints "N passed, N failed".
BUILD=${LDM_BUILD:-build}
PACK="$BUILD/ldmpack"
GEN="$BUILD/ldmgen"
FIX=tests/fixtures
TMP=$(mktemp -d "${TMPDIR:-/tmp}/ldmtest.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
# ldmgen records history: into the test's own database, never the user's
export LDM_DB="$TMP/ldm.db"
passed=0; failed=0
ok()   { passed=$((passed + 1)); }
bad()  { failed=$((failed + 1)); echo "FAIL: $*"; }
check() { desc=$1; shift; if "$@"; then ok; else bad "$desc"; fi; }
# expect_fail DESC EXPECTED_RC REGEX CMD...: the command must exit EXPECTED_RC and
# its stderr must match REGEX (grep -E).
expect_fail() {
    desc=$1; want=$2; re=$3; shift 3
    "$@" >"$TMP/out" 2>"$TMP/err"; rc=$?
    if [ "$rc" -ne "$want" ]; then bad "$desc: exit $rc, want $want; stderr: $(head -c 300 "$TMP/err")"; return; fi
    if ! grep -qE -- "$re" "$TMP/err"; then bad "$desc: stderr does not match /$re/: $(head -c 300 "$TMP/err")"; return; fi
    ok
}
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; }
