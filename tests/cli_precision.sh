#!/bin/sh
# cli_precision.sh - ldmgen --precision: bf16 images are recorded with their precision and
# instruction set (history and the PNG's "ldm" chunk), replay in the recorded precision gives
# the same bytes, fp32 is the default, and a bad value is a usage error.  On a CPU without AMX
# or AVX512_BF16, bf16 says so, runs fp32 and records fp32 (checked instead of the bf16 row).
. tests/lib.sh

DB="$TMP/p.db"
"$GEN" --db "$DB" -q -n 6 --seed 5 -o "$TMP/f.png" "red apple" || bad "fp32 run"
"$GEN" --db "$DB" -q -n 6 --seed 5 --precision bf16 -o "$TMP/b.png" "red apple" 2> "$TMP/err" \
    || bad "bf16 run: $(cat "$TMP/err")"
"$GEN" history --db "$DB" --json --limit 2 > "$TMP/j"
f_prec=$(sed -n 2p "$TMP/j" | grep -o '"precision": *"[a-z0-9]*"' | grep -o '[a-z0-9]*"$' | tr -d '"')
b_prec=$(sed -n 1p "$TMP/j" | grep -o '"precision": *"[a-z0-9]*"' | grep -o '[a-z0-9]*"$' | tr -d '"')
b_isa=$(sed -n 1p "$TMP/j" | grep -o '"isa": *"[a-z0-9]*"' | grep -o '[a-z0-9]*"$' | tr -d '"')
check "fp32 is the default and is recorded (got '$f_prec')" test "$f_prec" = fp32
if grep -q "running fp32" "$TMP/err"; then
    check "without bf16 instructions: recorded fp32 (got '$b_prec')" test "$b_prec" = fp32
    check "without bf16 instructions: the fp32 bytes" cmp -s "$TMP/f.png" "$TMP/b.png"
else
    check "bf16 recorded (got '$b_prec')" test "$b_prec" = bf16
    check "bf16 instruction set recorded (got '$b_isa')" sh -c "test '$b_isa' = amx || test '$b_isa' = avx512bf16"
    check "bf16 differs from fp32" sh -c "! cmp -s '$TMP/f.png' '$TMP/b.png'"
fi
check "the PNG's ldm chunk has the precision" grep -a -q "\"precision\":\"$b_prec\"" "$TMP/b.png"
# replay from the PNG: the recorded precision, the same bytes
"$GEN" replay --db "$DB" -o "$TMP/r.png" "$TMP/b.png" > "$TMP/rout" 2> "$TMP/rerr"
check "replay of the bf16 image gives its bytes ($(cat "$TMP/rerr"))" cmp -s "$TMP/b.png" "$TMP/r.png"
expect_fail "--precision fp16" 2 'precision "fp16"' "$GEN" --precision fp16 -o "$TMP/x.png" x
check "nothing written" test ! -e "$TMP/x.png"
finish
