#!/bin/sh
# cli_gen.sh - the ldmgen command line: bad input (exit status, one clear message, no file
# left behind), `ldmgen tokenize`, reproducible PNG bytes, the A1111 "parameters" chunk,
# batch file names and seeds, quiet mode, interrupt.
. tests/lib.sh

B1="$TMP/sd1.ldmb"; B2="$TMP/sd2.ldmb"
"$PACK" -q "$FIX/models/sd1" -o "$B1" || bad "pack sd1"
"$PACK" -q "$FIX/models/sd2" -o "$B2" || bad "pack sd2"
P="a photo of an astronaut riding a horse on mars"
OUT="$TMP/imgs"; mkdir -p "$OUT"

# nothing at all may be left in $OUT (no image, no temporary file)
empty_out() { [ -z "$(ls -A "$OUT")" ]; }
# expect_bad DESC RC REGEX ARGS...: ldmgen ARGS fails as expected and leaves nothing
expect_bad() {
    d=$1; r=$2; re=$3; shift 3
    expect_fail "$d" "$r" "$re" "$GEN" --bundle "$B1" -n 2 -o "$OUT/x.png" "$@"
    check "$d: nothing written" empty_out
    rm -rf "$OUT"/* 2>/dev/null
    # one line only
    [ "$(wc -l < "$TMP/err")" -le 1 ] || bad "$d: more than one line on stderr: $(cat "$TMP/err")"
}

# ---- usage errors: exit 2 ----
expect_bad "-g abc"           2 'guidance scale "abc"'        -g abc "$P"
expect_bad "-g empty"         2 'guidance scale'              -g "" "$P"
expect_bad "-g 1e999"         2 'guidance scale'              -g 1e999 "$P"
expect_bad "-g -5"            2 'guidance scale'              -g -5 "$P"
expect_bad "-n 0"             2 'steps "0".*1 to 1000'        -n 0 "$P"
expect_bad "-n 100000"        2 'steps "100000"'              -n 100000 "$P"
expect_bad "-n 2.5"           2 'steps "2.5"'                 -n 2.5 "$P"
expect_bad "--seed -1"        2 'seed "-1"'                   --seed -1 "$P"
expect_bad "--seed 1.5"       2 'seed "1.5"'                  --seed 1.5 "$P"
expect_bad "--seed 2^64"      2 'seed "18446744073709551616"' --seed 18446744073709551616 "$P"
expect_bad "--seed abc"       2 'seed "abc"'                  --seed abc "$P"
expect_bad "--seed +1"        2 'seed "\+1"'                  --seed +1 "$P"
expect_bad "-W 100"           2 'width "100".*multiple of 8'  -W 100 "$P"
expect_bad "-H 0"             2 'height "0"'                  -H 0 "$P"
expect_bad "-b 0"             2 'batch "0"'                   -b 0 "$P"
expect_bad "--scheduler foo"  2 'unknown scheduler "foo"'     --scheduler foo "$P"
expect_bad "--timestep-spacing x" 2 'timestep spacing "x"'    --timestep-spacing x "$P"
expect_bad "--eta 2"          2 'eta "2"'                     --eta 2 "$P"
expect_bad "--clip-skip 0"    2 'clip skip "0"'               --clip-skip 0 "$P"
expect_bad "unknown option"   2 'unknown option --frobnicate' --frobnicate "$P"
expect_bad "unknown short"    2 'unknown option -Z'           -Z "$P"
expect_bad "missing value"    2 'option --seed needs a value' "$P" --seed
expect_bad "no prompt"        2 'no prompt'
expect_bad "two prompts"      2 'one prompt argument, got 2'  "$P" "second"
expect_bad "--karras on pndm" 2 'karras.*euler and dpmpp_2m'  --karras "$P"
expect_bad "--eta on euler"   2 'eta applies to the ddim'     --scheduler euler --eta 0.5 "$P"
expect_bad "ddim 1000 steps"  2 'timestep 1000'               --scheduler ddim -n 1000 "$P"

# ---- runtime errors: exit 1 ----
expect_bad "missing bundle"   1 'none\.ldmb' --bundle "$TMP/none.ldmb" "$P"
head -c 100000 "$B1" > "$TMP/cut.ldmb"
expect_bad "truncated bundle" 1 'cut\.ldmb'  --bundle "$TMP/cut.ldmb" "$P"
printf 'not a bundle at all\n' > "$TMP/junk.ldmb"
expect_bad "junk bundle"      1 'junk\.ldmb' --bundle "$TMP/junk.ldmb" "$P"
expect_fail "output folder missing" 1 'nodir.*does not exist' "$GEN" --bundle "$B1" -n 2 -o "$TMP/nodir/x.png" "$P"
check "output folder missing: no folder made" test ! -e "$TMP/nodir"
: > "$TMP/afile"
expect_fail "output parent is a file" 1 'afile.*not a folder' "$GEN" --bundle "$B1" -n 2 -o "$TMP/afile/x.png" "$P"
expect_fail "output is a folder" 1 'is a folder' "$GEN" --bundle "$B1" -n 2 -o "$OUT" "$P"
if [ "$(id -u)" -ne 0 ]; then
    mkdir -p "$TMP/ro"; chmod 555 "$TMP/ro"
    expect_fail "output folder read-only" 1 'not writable' "$GEN" --bundle "$B1" -n 2 -o "$TMP/ro/x.png" "$P"
    check "read-only: nothing written" test -z "$(ls -A "$TMP/ro")"
fi
LDM_BUNDLE="$TMP/env-none.ldmb" expect_fail "LDM_BUNDLE used" 1 'env-none\.ldmb' "$GEN" -n 2 -o "$OUT/x.png" "$P"
check "no file after runtime errors" empty_out

# ---- help, version ----
"$GEN" --help > "$TMP/help" 2>&1; check "--help exits 0" test $? -eq 0
check "--help names LDM_BUNDLE" grep -q 'LDM_BUNDLE' "$TMP/help"
check "--help lists the schedulers" grep -q 'dpmpp_2m' "$TMP/help"
"$GEN" --version > "$TMP/ver" 2>&1; check "--version exits 0" test $? -eq 0
check "--version prints the version" grep -qE '^ldmgen \(ldm\) [0-9]+\.[0-9]+' "$TMP/ver"

# ---- tokenize --prompt-syntax plain: ids of the fixture prompts, as before the A1111
# syntax (tests/cli_a1111.sh has the default output) ----
line=$(sed -n 1p "$FIX/clip/cases.jsonl")
text=$(printf '%s\n' "$line" | sed 's/^{"text": "\([^"]*\)".*/\1/')
want1=$(printf '%s\n' "$line" | sed 's/.*"input_ids_sd1": \[\([^]]*\)\].*/\1/' | tr -d ',')
want2=$(printf '%s\n' "$line" | sed 's/.*"input_ids_sd2": \[\([^]]*\)\].*/\1/' | tr -d ',')
got1=$("$GEN" tokenize --bundle "$B1" --prompt-syntax plain -- "$text"); rc=$?
check "tokenize exits 0" test $rc -eq 0
check "tokenize sd1 ids of \"$text\"" test "$got1" = "$want1"
got2=$(LDM_BUNDLE="$B2" "$GEN" tokenize --prompt-syntax plain "$text")
check "tokenize sd2 ids (pad !) via LDM_BUNDLE" test "$got2" = "$want2"
check "tokenize prints 77 ids" test "$(printf '%s\n' "$got1" | wc -w)" -eq 77
long=$(for i in $(seq 1 90); do printf 'word '; done)
"$GEN" tokenize --bundle "$B1" --prompt-syntax plain "$long" > /dev/null 2> "$TMP/err"
check "tokenize warns when truncating" grep -q 'truncated' "$TMP/err"
expect_fail "tokenize missing bundle" 1 'none\.ldmb' "$GEN" tokenize --bundle "$TMP/none.ldmb" "$P"
expect_fail "tokenize no prompt" 2 'one prompt' "$GEN" tokenize --bundle "$B1"

# ---- generation: same seed twice -> same bytes; the parameters chunk ----
"$GEN" --bundle "$B1" -n 3 --seed 42 -o "$OUT/a.png" "$P" > "$TMP/stdout" 2> "$TMP/err"
check "generate exits 0 ($(head -c 200 "$TMP/err"))" test $? -eq 0
check "prints the file written" grep -qx "$OUT/a.png" "$TMP/stdout"
"$GEN" --bundle "$B1" -n 3 --seed 42 -o "$OUT/b.png" -q "$P" > "$TMP/stdout" 2> "$TMP/err"
check "second run exits 0" test $? -eq 0
check "-q prints nothing" test ! -s "$TMP/stdout" -a ! -s "$TMP/err"
check "same seed, same PNG bytes" cmp -s "$OUT/a.png" "$OUT/b.png"
check "PNG signature" test "$(head -c 8 "$OUT/a.png" | od -An -c | tr -d ' ')" = '211PNG\r\n032\n'
check "parameters chunk" grep -aq 'parameters' "$OUT/a.png"
check "parameters: prompt" grep -aq "$P" "$OUT/a.png"
check "parameters: A1111 line" grep -aqE "Steps: 3, Sampler: PLMS, CFG scale: 7\.5, Seed: 42, Size: 64x64, Model hash: [0-9a-f]{10}, Model: sd1, Version: ldm [0-9]" "$OUT/a.png"
check "no negative line when empty" sh -c "! grep -aq 'Negative prompt' '$OUT/a.png'"
"$GEN" --bundle "$B1" -n 3 --seed 43 -o "$OUT/c.png" -q "$P"
check "another seed, another image" sh -c "! cmp -s '$OUT/a.png' '$OUT/c.png'"
"$GEN" --bundle "$B1" -n 2 --seed 7 -g 5 --negative "blurry" --scheduler euler_a --clip-skip 2 -o "$OUT/d.png" -q "$P"
check "euler_a run" test -s "$OUT/d.png"
check "parameters: negative line" grep -aqx "Negative prompt: blurry" "$OUT/d.png"
check "parameters: sampler, clip skip" grep -aqE "^Steps: 2, Sampler: Euler a, CFG scale: 5, Seed: 7, .*Clip skip: 2" "$OUT/d.png"
"$GEN" --bundle "$B1" -n 2 --seed 7 --scheduler dpmpp_2m --karras -o "$OUT/k.png" -q "$P"
check "parameters: DPM++ 2M Karras" grep -aq "Sampler: DPM++ 2M Karras" "$OUT/k.png"
"$GEN" --bundle "$B2" -n 2 --seed 7 --scheduler ddim --eta 0.5 --timestep-spacing trailing -W 64 -H 96 -o "$OUT/e.png" -q "$P"
check "sd2 ddim eta, 64x96" grep -aqE "Sampler: DDIM, .*Size: 64x96, .*Eta DDIM: 0.5, Timestep spacing: trailing" "$OUT/e.png"
# any multiple of 8: sd2's UNet (3 levels, factor 4) resizes its up path at 40x72 pixels
"$GEN" --bundle "$B2" -n 2 --seed 7 -W 40 -H 72 -o "$OUT/odd.png" -q "$P"
check "sd2 at 40x72 (a multiple of 8, not of 32)" grep -aq "Size: 40x72" "$OUT/odd.png"
check "40x72 PNG header" test "$(od -An -tu1 -j16 -N8 "$OUT/odd.png" | tr -s ' ')" = " 0 0 0 40 0 0 0 72"

# ---- batch: numbered files, seeds S, S+1 ----
rm -f "$OUT"/*
"$GEN" --bundle "$B1" -n 2 --seed 10 -b 2 -o "$OUT/batch.png" "$P" > "$TMP/stdout" 2>/dev/null
check "batch exits 0" test $? -eq 0
check "batch: batch-0001.png" test -s "$OUT/batch-0001.png"
check "batch: batch-0002.png" test -s "$OUT/batch-0002.png"
check "batch: no batch.png" test ! -e "$OUT/batch.png"
check "batch: two lines printed" test "$(wc -l < "$TMP/stdout")" -eq 2
check "batch: first seed 10" grep -aq "Seed: 10, " "$OUT/batch-0001.png"
check "batch: second seed 11" grep -aq "Seed: 11, .*Batch size: 2, Batch pos: 1" "$OUT/batch-0002.png"
"$GEN" --bundle "$B1" -n 2 --seed 11 -o "$OUT/single11.png" -q "$P"
"$GEN" --bundle "$B1" -n 2 --seed 11 -b 1 -o "$OUT/again11.png" -q "$P"
check "-b 1 writes the name as given" cmp -s "$OUT/single11.png" "$OUT/again11.png"

# ---- random seed: printed and recorded ----
"$GEN" --bundle "$B1" -n 1 -o "$OUT/r.png" "$P" > /dev/null 2> "$TMP/err"
seed=$(sed -n 's/^seed: \([0-9]*\)$/\1/p' "$TMP/err")
check "random seed printed on stderr" test -n "$seed"
check "random seed in the parameters" grep -aq "Seed: $seed, " "$OUT/r.png"

# ---- long prompt warning (the plain syntax truncates; A1111's makes chunks) ----
"$GEN" --bundle "$B1" -n 1 --seed 1 --prompt-syntax plain -o "$OUT/long.png" "$long" > /dev/null 2> "$TMP/err"
check "long prompt: warning" grep -q 'longer than 75 tokens.*truncated' "$TMP/err"
check "long prompt: image written" test -s "$OUT/long.png"

# ---- interrupt: exit 130, nothing written ----
rm -f "$OUT"/*
"$GEN" --bundle "$B1" -n 1000 --scheduler euler -o "$OUT/int.png" -q "$P" 2> "$TMP/err" &
pid=$!
sleep 3
kill -INT $pid 2>/dev/null
wait $pid; rc=$?
check "interrupt exits 130 (got $rc)" test $rc -eq 130
check "interrupt: nothing written" empty_out

finish
