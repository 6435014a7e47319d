#!/bin/sh
# cli_backend.sh - what the backend handle makes visible through ldmgen: a failing op
# (fault injection LDM_TEST_FAIL_OP=K) fails the run with the op named, writes no PNG and
# no temporary file, records the row as failed and stores nothing in the embedding cache;
# -v prints a per-op profile; the bundle is found beside an installed ldmgen whatever
# PREFIX it was built with, and the message lists the places searched when there is none;
# bad --since/--until dates are refused.
. tests/lib.sh

B1="$TMP/sd1.ldmb"
"$PACK" -q "$FIX/models/sd1" -o "$B1" || bad "pack sd1"
OUT="$TMP/imgs"; mkdir -p "$OUT"
DB="$TMP/fault.db"
q() { sqlite3 "$DB" "$1"; }

# ---- a failing op: K = 1 is the text encoder's first op, K = 150 one inside the UNet ----
for K in 1 150; do
    rm -f "$DB"
    LDM_TEST_FAIL_OP=$K LDM_BACKEND=cpu "$GEN" --bundle "$B1" --db "$DB" -n 2 --seed 3 \
        -o "$OUT/f.png" "a red cube" >"$TMP/out.txt" 2>"$TMP/err"
    rc=$?
    check "fail op $K: exit 1 (got $rc)" [ "$rc" -eq 1 ]
    check "fail op $K: message names the op" grep -qE 'cpu backend: op [a-z_0-9]+: injected failure at op call '"$K" "$TMP/err"
    check "fail op $K: one line" [ "$(wc -l < "$TMP/err")" -eq 1 ]
    [ "$K" = 1 ] && check "fail op 1: in the text encoder" grep -q 'text encoder (prompt)' "$TMP/err"
    [ "$K" = 150 ] && check "fail op 150: in the UNet" grep -q 'unet, step 1' "$TMP/err"
    check "fail op $K: no PNG, no temporary file" [ -z "$(ls -A "$OUT")" ]
    check "fail op $K: row failed" [ "$(q "SELECT status FROM generations")" = failed ]
    check "fail op $K: row has the message" sh -c "sqlite3 '$DB' 'SELECT error FROM generations' | grep -q 'injected failure'"
    check "fail op $K: nothing in the embedding cache" [ "$(q "SELECT COUNT(*) FROM embedding_cache")" = 0 ]
done
# the same run without the fault: ok, and the cache holds the two embeddings
LDM_BACKEND=cpu "$GEN" --bundle "$B1" --db "$DB" -n 2 --seed 3 -q -o "$OUT/f.png" "a red cube"
check "no fault: ok" [ "$(q "SELECT status FROM generations ORDER BY id DESC LIMIT 1")" = ok ]
check "no fault: prompt and negative cached" [ "$(q "SELECT COUNT(*) FROM embedding_cache WHERE backend = 'cpu' AND precision = 'fp32'")" = 2 ]
expect_fail "LDM_TEST_FAIL_OP=abc" 2 'LDM_TEST_FAIL_OP=abc' env LDM_TEST_FAIL_OP=abc "$GEN" --bundle "$B1" -o "$OUT/g.png" x
expect_fail "LDM_BACKEND=tpu" 2 'LDM_BACKEND=tpu' env LDM_BACKEND=tpu "$GEN" --bundle "$B1" -o "$OUT/g.png" x
rm -f "$OUT"/*

# ---- --device auto|cpu|cuda (and LDM_BACKEND=auto) ----
expect_fail "--device tpu" 2 'device "tpu": expected auto, cpu or cuda' "$GEN" --bundle "$B1" --device tpu -o "$OUT/g.png" x
LDM_BACKEND=cuda "$GEN" --bundle "$B1" --no-history --device cpu -n 1 --seed 1 -q -o "$OUT/d.png" x 2>"$TMP/err"
check "--device cpu overrides LDM_BACKEND=cuda: $(cat "$TMP/err")" [ -s "$OUT/d.png" ]
LDM_BACKEND=auto "$GEN" --bundle "$B1" --no-history -n 1 --seed 1 -q -o "$OUT/a.png" x 2>"$TMP/err"
check "LDM_BACKEND=auto: $(cat "$TMP/err")" [ -s "$OUT/a.png" ]
if ! nvidia-smi -L >/dev/null 2>&1; then
    # no GPU here: asking for CUDA is an error that names it, and nothing is written
    "$GEN" --bundle "$B1" --db "$TMP/dev.db" --device cuda -n 1 --seed 1 -o "$OUT/c.png" x >/dev/null 2>"$TMP/err"
    rc=$?
    check "--device cuda without a GPU: exit 1 (got $rc)" [ "$rc" -eq 1 ]
    check "--device cuda without a GPU: the message names CUDA: $(cat "$TMP/err")" grep -qiE 'cuda' "$TMP/err"
    check "--device cuda without a GPU: no PNG" [ ! -e "$OUT/c.png" ]
    "$GEN" --bundle "$B1" --no-history --device auto -n 1 --seed 1 -q -o "$OUT/c.png" x 2>"$TMP/err"
    check "--device auto without a GPU runs on the CPU: $(cat "$TMP/err")" [ -s "$OUT/c.png" ]
fi
rm -f "$OUT"/*

# ---- -v: the per-op profile ----
LDM_BACKEND=cpu "$GEN" --bundle "$B1" --no-history -n 1 --seed 1 -v -o "$OUT/v.png" x >/dev/null 2>"$TMP/err"
check "-v: per-op profile" grep -q 'per-op profile (cpu backend' "$TMP/err"
check "-v: conv2d and linear counted" sh -c "grep -qE '^  conv2d +[0-9]+ calls' '$TMP/err' && grep -qE '^  linear +[0-9]+ calls' '$TMP/err'"

# ---- the default bundle beside an installed program, whatever PREFIX it was built with ----
if [ -f bundle/default.ldmb ]; then
    P="$TMP/prefix"
    # -o: the programs under test are installed as they are, never rebuilt here (an
    # ASan build would otherwise be relinked without its flags)
    make -s -o "$BUILD/ldmgen" -o "$BUILD/ldmpack" install PREFIX="$P" BUILD="$BUILD" >/dev/null 2>"$TMP/err" ||
        bad "make install: $(cat "$TMP/err")"
    check "installed: bundle under PREFIX/share/ldm" [ -f "$P/share/ldm/default.ldmb" ]
    (cd "$TMP" && env -u LDM_BUNDLE "$P/bin/ldmgen" --no-history -n 1 --seed 2 -q -o "$TMP/inst.png" "red apple") \
        2>"$TMP/err"
    check "installed ldmgen finds PREFIX/share/ldm/default.ldmb from another folder: $(cat "$TMP/err")" [ -s "$TMP/inst.png" ]
fi
mkdir -p "$TMP/lonely/bin"
cp "$GEN" "$TMP/lonely/bin/ldmgen"
(cd "$TMP/lonely" && env -u LDM_BUNDLE ./bin/ldmgen --no-history -o x.png "red apple") >/dev/null 2>"$TMP/err"
rc=$?
# (skip when a default bundle is installed system-wide: then it is found, rightly)
if ! grep -q 'searched' "$TMP/err" && [ "$rc" -eq 0 ]; then
    echo "note: a system-wide default bundle exists; the not-found message is not checked"
else
    check "no bundle anywhere: exit 1 (got $rc)" [ "$rc" -eq 1 ]
    check "no bundle anywhere: lists the places searched" grep -q 'no default bundle found (searched .*share/ldm/default.ldmb.*bundle/default.ldmb' "$TMP/err"
fi

# ---- history dates ----
expect_fail "--since garbage" 2 "since 'yesterday'" "$GEN" history --db "$DB" --since yesterday
expect_fail "--until bad month" 2 "until '2026-13-01'" "$GEN" history --db "$DB" --until 2026-13-01
expect_fail "--since half a time" 2 "since '2026-01-01T1'" "$GEN" history --db "$DB" --since 2026-01-01T1
"$GEN" history --db "$DB" --since 2000-01-01 --until "2999-12-31 23:59" --json >"$TMP/h.json" 2>"$TMP/err"
check "--since/--until dates and times accepted" [ "$(wc -l < "$TMP/h.json")" -eq 2 ]
"$GEN" history --db "$DB" --since 2999-01-01T00:00:00Z --json >"$TMP/h.json" 2>/dev/null
check "--since in the future: nothing" [ ! -s "$TMP/h.json" ]
finish
