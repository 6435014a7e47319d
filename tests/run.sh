#!/bin/sh
# Run every C test binary in BUILD/tests and every tests/cli_*.sh script, then print
# the total as "N passed, N failed".  Run from the repository root.
BUILD=${1:-build}
export LDM_BUILD="$BUILD"
total_p=0; total_f=0; broken=""
for t in "$BUILD"/tests/test_* tests/cli_*.sh; do
    [ -e "$t" ] || continue
    echo "== $t"
    out=$("$t" 2>&1); rc=$?
    printf '%s\n' "$out" | grep -v '^PASS' | tail -n 40
    line=$(printf '%s\n' "$out" | grep -E '^[0-9]+ passed, [0-9]+ failed$' | tail -n 1)
    if [ -z "$line" ]; then
        broken="$broken $t"; total_f=$((total_f + 1))
        echo "!! $t ended without a summary line (exit $rc)"
        continue
    fi
    p=${line%% passed*}; f=${line#*, }; f=${f%% failed}
    total_p=$((total_p + p)); total_f=$((total_f + f))
    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        total_f=$((total_f + 1)); echo "!! $t exited $rc with no failed check"
    fi
done
[ -n "$broken" ] && echo "broken:$broken"
echo "$total_p passed, $total_f failed"
[ "$total_f" -eq 0 ]
