#!/bin/sh
# cli_default.sh - the committed default bundle (bundle/default.ldmb, the emoji demo
# model): it loads and verifies, ldmgen uses it when neither --bundle nor LDM_BUNDLE is
# given, and one image from it is the same PNG bytes on every run for a fixed seed.
. tests/lib.sh
unset LDM_BUNDLE
DEF=bundle/default.ldmb

check "default bundle is committed" test -s "$DEF"
"$PACK" --verify "$DEF" >"$TMP/verify" 2>&1; rc=$?
check "ldmpack --verify default bundle (exit $rc: $(tail -n 1 "$TMP/verify"))" test "$rc" -eq 0
"$PACK" --info "$DEF" >"$TMP/info" 2>&1
check "--info names the three components" grep -q "text_encoder" "$TMP/info"
size=$(wc -c < "$DEF")
check "default bundle is under 30 MB ($size bytes)" test "$size" -lt 31457280

# No --bundle and no LDM_BUNDLE: ldmgen picks bundle/default.ldmb from the working folder.
start=$(date +%s)
"$GEN" "red apple" --seed 42 -n 20 -o "$TMP/a.png" -q; rc=$?
end=$(date +%s)
check "generate from the default bundle (exit $rc)" test "$rc" -eq 0
"$GEN" "red apple" --seed 42 -n 20 -o "$TMP/b.png" -q
check "same seed, same PNG bytes" cmp -s "$TMP/a.png" "$TMP/b.png"
"$GEN" "red apple" --seed 43 -n 20 -o "$TMP/c.png" -q
check "another seed, another image" sh -c "! cmp -s '$TMP/a.png' '$TMP/c.png'"
echo "one 20-step image from the default bundle took $((end - start)) s (wall, including load)"
# "A few seconds at most": a generous bound, so that a loaded CI machine does not fail
# the test, but a pathological slowdown (e.g. a model too large for the demo) does.
check "one image within 30 s (took $((end - start)) s)" test $((end - start)) -le 30
finish
