#!/bin/sh
# cli_inpaint.sh - ldmgen --init-img --mask: with the 9-channel inpainting fixture and the
# ordinary 4-channel one; strength defaults to 1 (diffusers' inpainting default); the PNG
# chunks and the history row carry the mask's pixel hash (A1111's "Mask blur" key), a copy
# of the mask is kept beside the database, replay by id and by PNG is byte-identical after
# the original mask is gone; ldmpack --info names an inpainting model; bad input refused
# with the file or option named, exit 2 or 1, nothing written.
. tests/lib.sh

B1="$TMP/sd1.ldmb"; B9="$TMP/sd1_inpaint.ldmb"
"$PACK" -q "$FIX/models/sd1" -o "$B1" || bad "pack sd1"
"$PACK" -q "$FIX/models/sd1_inpaint" -o "$B9" || bad "pack sd1_inpaint (9-channel UNet)"
OUTD="$TMP/imgs"; mkdir -p "$OUTD"
DBD="$TMP/hist"; mkdir -p "$DBD"; DB="$DBD/h.db"
MASK="$TMP/mask.png"; cp "$FIX/img/mask64.png" "$MASK"
INIT="$FIX/img/init64.png"
q() { sqlite3 "$DB" "$1"; }

"$PACK" --info "$B9" > "$TMP/info9"
check "--info: inpainting model" grep -q 'model type *inpainting (unet in_channels 9)' "$TMP/info9"
"$PACK" --info "$B1" > "$TMP/info1"
check "--info: text to image with a VAE encoder" grep -q 'model type *text to image; image to image and inpainting' "$TMP/info1"
"$PACK" --info --json "$B9" > "$TMP/info9.json"
check "--info --json: model_type" grep -q '"model_type": "inpainting"' "$TMP/info9.json"

for b in 9 1; do
    eval bundle=\$B$b
    "$GEN" --bundle "$bundle" --db "$DB" -q -n 6 --seed 42 --init-img "$INIT" --mask "$MASK" \
        -o "$OUTD/i$b.png" "a red cube" 2>"$TMP/err"
    check "inpainting ($b-channel UNet) writes the PNG: $(cat "$TMP/err")" test -s "$OUTD/i$b.png"
    check "$b: parameters: Denoising strength 1, Mask blur 0" grep -aq 'Denoising strength: 1, Mask blur: 0' "$OUTD/i$b.png"
    msha=$(q "SELECT mask_sha256 FROM generations ORDER BY id DESC LIMIT 1")
    check "$b: row: pixel hash of the mask" [ ${#msha} -eq 64 ]
    check "$b: row: strength 1 (the default with --mask)" [ "$(q "SELECT strength FROM generations ORDER BY id DESC LIMIT 1")" = 1.0 ]
    check "$b: row: the mask path" [ "$(q "SELECT mask_image FROM generations ORDER BY id DESC LIMIT 1")" = "$MASK" ]
    check "$b: ldm chunk: the mask's pixel hash" grep -aq "\"mask_sha256\":\"$msha\"" "$OUTD/i$b.png"
    check "$b: a copy of the mask beside the database" test -s "$DBD/images/$msha.png"
done
# the mask matters: without it (img2img at strength 1) the 4-channel image differs
"$GEN" --bundle "$B1" --db "$DB" -q -n 6 --seed 42 --init-img "$INIT" --strength 1 -o "$OUTD/n1.png" "a red cube"
check "4-channel: the mask changes the image" sh -c "! cmp -s '$OUTD/i1.png' '$OUTD/n1.png'"
"$GEN" --bundle "$B9" --db "$DB" -q -n 4 --seed 3 --init-img "$INIT" --mask "$FIX/img/mask80x72.png" --strength 0.7 \
    --scheduler euler_a -o "$OUTD/e.png" "a red cube" 2>"$TMP/err"
check "a mask of another size is resized; strength 0.7; euler_a: $(cat "$TMP/err")" test -s "$OUTD/e.png"
eid=$(q "SELECT id FROM generations ORDER BY id DESC LIMIT 1")

# replay after the original mask is gone: from the copy, by id and by PNG
id9=$(q "SELECT id FROM generations WHERE output_path LIKE '%i9.png'")
rm -f "$MASK"
"$GEN" replay --db "$DB" -q -o "$OUTD/r1.png" "$id9" 2>"$TMP/err"
check "replay by id from the mask's copy: identical: $(cat "$TMP/err")" cmp -s "$OUTD/i9.png" "$OUTD/r1.png"
"$GEN" replay --db "$DB" -q --bundle "$B1" -o "$OUTD/r2.png" "$OUTD/i1.png" 2>"$TMP/err"
check "replay by PNG (4-channel): identical: $(cat "$TMP/err")" cmp -s "$OUTD/i1.png" "$OUTD/r2.png"
"$GEN" replay --db "$DB" -q -o "$OUTD/r3.png" "$eid" 2>"$TMP/err"
check "replay of the euler_a run with the resized mask: identical: $(cat "$TMP/err")" cmp -s "$OUTD/e.png" "$OUTD/r3.png"
rm -rf "$DBD/images"
expect_fail "replay without the mask" 1 'mask .*give it with --mask' "$GEN" replay --db "$DB" --init-img "$INIT" -o "$OUTD/r4.png" "$id9"
expect_fail "replay with another mask" 1 'its pixels have SHA-256' "$GEN" replay --db "$DB" --init-img "$INIT" --mask "$FIX/img/mask80x72.png" -o "$OUTD/r4.png" "$id9"
"$GEN" replay --db "$DB" -q --init-img "$INIT" --mask "$FIX/img/mask64.png" -o "$OUTD/r5.png" "$id9" 2>"$TMP/err"
check "replay with --init-img and --mask: identical: $(cat "$TMP/err")" cmp -s "$OUTD/i9.png" "$OUTD/r5.png"
check "nothing written by the refused replays" test ! -e "$OUTD/r4.png"
# (a record whose mask_sha256 is not a hash is refused: test_generate.c)

# ---- bad input: exit code, the file or option named, nothing written ----
G="$GEN --db $DB -n 2"
expect_fail "--mask without --init-img" 2 'mask goes with --init-img' $G --bundle "$B1" --mask "$FIX/img/mask64.png" -o "$OUTD/x.png" x
expect_fail "9-channel model without a mask" 2 'inpainting model .*--mask' $G --bundle "$B9" --init-img "$INIT" -o "$OUTD/x.png" x
expect_fail "9-channel model, text only" 2 'inpainting model' $G --bundle "$B9" -o "$OUTD/x.png" x
expect_fail "missing mask" 1 'nope.png' $G --bundle "$B9" --init-img "$INIT" --mask "$TMP/nope.png" -o "$OUTD/x.png" x
printf 'not an image' > "$TMP/fake.png"
expect_fail "a mask that is not an image" 1 'fake.png: not a PNG or JPEG' $G --bundle "$B9" --init-img "$INIT" --mask "$TMP/fake.png" -o "$OUTD/x.png" x
head -c 100 "$FIX/img/mask64.png" > "$TMP/trunc.png"
expect_fail "truncated mask" 1 'trunc.png' $G --bundle "$B9" --init-img "$INIT" --mask "$TMP/trunc.png" -o "$OUTD/x.png" x
mkfifo "$TMP/fifo.png"
expect_fail "a FIFO as mask (no hang)" 1 'fifo.png: not a regular file' timeout 20 $G --bundle "$B9" --init-img "$INIT" --mask "$TMP/fifo.png" -o "$OUTD/x.png" x
expect_fail "a FIFO as init image (no hang)" 1 'fifo.png: not a regular file' timeout 20 $G --bundle "$B1" --init-img "$TMP/fifo.png" -o "$OUTD/x.png" x
# a huge picture is refused from its header, before decoding
printf '\211PNG\r\n\032\n\000\000\000\015IHDR\000\001\000\000\000\001\000\000\010\002\000\000\000' > "$TMP/huge.png"
printf '\000\000\000\000' >> "$TMP/huge.png"
expect_fail "a 65536x65536 mask" 1 'huge.png' $G --bundle "$B9" --init-img "$INIT" --mask "$TMP/huge.png" -o "$OUTD/x.png" x
expect_fail "--strength 1.5 with --mask" 2 'strength "1.5"' $G --bundle "$B9" --init-img "$INIT" --mask "$FIX/img/mask64.png" --strength 1.5 -o "$OUTD/x.png" x
expect_fail "--final-sigmas on pndm" 2 'final-sigmas applies to the dpmpp_2m' $G --bundle "$B1" --final-sigmas zero -o "$OUTD/x.png" x
expect_fail "--final-sigmas unknown" 2 'final sigmas "one"' $G --bundle "$B1" --scheduler dpmpp_2m --final-sigmas one -o "$OUTD/x.png" x
check "nothing written by the refusals" test ! -e "$OUTD/x.png"
finish
