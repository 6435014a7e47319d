#!/bin/sh
# cli_img2img.sh - ldmgen --init-img/--strength: the PNG chunks and the history row carry
# the strength and the init image's pixel hash (A1111's "Denoising strength"), a copy of
# the image is kept beside the database so replay works after the original is gone,
# replay by id and by PNG is byte-identical, and bad input is refused cleanly.
. tests/lib.sh

B1="$TMP/sd1.ldmb"
"$PACK" -q "$FIX/models/sd1" -o "$B1" || bad "pack sd1"
OUTD="$TMP/imgs"; mkdir -p "$OUTD"
DBD="$TMP/hist"; mkdir -p "$DBD"; DB="$DBD/h.db"
INIT="$TMP/init.png"; cp "$FIX/img/init64.png" "$INIT"
G="$GEN --bundle $B1 --db $DB"
q() { sqlite3 "$DB" "$1"; }

$G -q -n 10 --seed 42 --init-img "$INIT" --strength 0.6 -o "$OUTD/a.png" "a red cube"
check "img2img writes the PNG" test -s "$OUTD/a.png"
check "parameters: Denoising strength" grep -aq 'Denoising strength: 0.6' "$OUTD/a.png"
check "ldm chunk: strength" grep -aqE '"strength":0\.(6|5999)' "$OUTD/a.png"
sha=$(q "SELECT init_image_sha256 FROM generations ORDER BY id DESC LIMIT 1")
check "row: pixel hash of the init image" [ ${#sha} -eq 64 ]
check "ldm chunk: the init image's pixel hash" grep -aq "\"init_image_sha256\":\"$sha\"" "$OUTD/a.png"
check "ldm chunk: no init image path" sh -c "! grep -aqF '$INIT' '$OUTD/a.png'"
check "row: the init image path" [ "$(q "SELECT init_image FROM generations ORDER BY id DESC LIMIT 1")" = "$INIT" ]
check "row: strength" [ "$(q "SELECT strength FROM generations ORDER BY id DESC LIMIT 1")" = 0.6 ]
check "a copy beside the database, named by the hash" test -s "$DBD/images/$sha.png"
id=$(q "SELECT id FROM generations ORDER BY id DESC LIMIT 1")
# the same picture as JPEG-free re-encoding: other bytes, same pixels, same image
$G -q -n 10 --seed 42 --init-img "$DBD/images/$sha.png" --strength 0.6 -o "$OUTD/b.png" "a red cube"
check "the same pixels from another file give the same image" cmp -s "$OUTD/a.png" "$OUTD/b.png"

# replay after the original is gone: from the copy
rm -f "$INIT"
"$GEN" replay --db "$DB" -q -o "$OUTD/r1.png" "$id" 2>"$TMP/err"
check "replay by id from the copy: identical: $(cat "$TMP/err")" cmp -s "$OUTD/a.png" "$OUTD/r1.png"
"$GEN" replay --db "$DB" -q --bundle "$B1" -o "$OUTD/r2.png" "$OUTD/a.png" 2>"$TMP/err"
check "replay by PNG from the copy: identical: $(cat "$TMP/err")" cmp -s "$OUTD/a.png" "$OUTD/r2.png"
# no copy and no original: says what to give
rm -rf "$DBD/images"
expect_fail "replay without the image" 1 'init image .*give it with --init-img' "$GEN" replay --db "$DB" -o "$OUTD/r3.png" "$id"
check "nothing written" test ! -e "$OUTD/r3.png"
expect_fail "replay with another image" 1 'its pixels have SHA-256' "$GEN" replay --db "$DB" --init-img "$FIX/img/init64.jpg" -o "$OUTD/r4.png" "$id"
"$GEN" replay --db "$DB" -q --init-img "$FIX/img/init64.png" -o "$OUTD/r5.png" "$id" 2>"$TMP/err"
check "replay with --init-img: identical" cmp -s "$OUTD/a.png" "$OUTD/r5.png"
# --no-image-copy keeps none
$G -q -n 4 --seed 1 --init-img "$FIX/img/init64_gray.png" --no-image-copy -o "$OUTD/g.png" "grey"
check "--no-image-copy: grey input works, no copy kept" sh -c "test -s '$OUTD/g.png' && test ! -d '$DBD/images'"
# JPEG, RGBA, a size that is not a multiple of 8 (rounded down and resized), -W/-H
$G -q -n 4 --seed 1 --init-img "$FIX/img/init64.jpg" -o "$OUTD/j.png" "jpeg"
check "JPEG input" test -s "$OUTD/j.png"
$G -q -n 4 --seed 1 --init-img "$FIX/img/init64_rgba.png" -o "$OUTD/t.png" "rgba"
check "RGBA input" test -s "$OUTD/t.png"
$G -q -n 4 --seed 1 --init-img "$FIX/img/init70x61.png" -o "$OUTD/o.png" "odd"
check "70x61 input gives a 64x56 image" [ "$(q "SELECT width || 'x' || height FROM generations ORDER BY id DESC LIMIT 1")" = 64x56 ]
$G -q -n 4 --seed 1 --init-img "$FIX/img/init64.png" -W 32 -H 48 -o "$OUTD/w.png" "sized"
check "-W/-H resize the init image" [ "$(q "SELECT width || 'x' || height FROM generations ORDER BY id DESC LIMIT 1")" = 32x48 ]

# ---- bad input: exit code, the file or option named, nothing written ----
rm -f "$OUTD"/x.png
expect_fail "missing init image" 1 'nope.png' $G -n 2 --init-img "$TMP/nope.png" -o "$OUTD/x.png" x
printf 'not an image' > "$TMP/fake.png"
expect_fail "not an image" 1 'fake.png: not a PNG or JPEG' $G -n 2 --init-img "$TMP/fake.png" -o "$OUTD/x.png" x
head -c 300 "$FIX/img/init64.png" > "$TMP/trunc.png"
expect_fail "truncated PNG" 1 'trunc.png' $G -n 2 --init-img "$TMP/trunc.png" -o "$OUTD/x.png" x
head -c 200 "$FIX/img/init64.jpg" > "$TMP/trunc.jpg"
expect_fail "truncated JPEG" 1 'trunc.jpg: invalid JPEG' $G -n 2 --init-img "$TMP/trunc.jpg" -o "$OUTD/x.png" x
expect_fail "--strength 0" 2 'strength "0"' $G --init-img "$FIX/img/init64.png" --strength 0 -o "$OUTD/x.png" x
expect_fail "--strength 1.5" 2 'strength "1.5"' $G --init-img "$FIX/img/init64.png" --strength 1.5 -o "$OUTD/x.png" x
expect_fail "--strength without --init-img" 2 'strength goes with --init-img' $G --strength 0.5 -o "$OUTD/x.png" x
expect_fail "strength too small for the steps" 2 'runs no denoising step' $G --scheduler ddim -n 3 --strength 0.2 --init-img "$FIX/img/init64.png" -o "$OUTD/x.png" x
check "nothing written by the refusals" test ! -e "$OUTD/x.png"
finish
