#!/bin/sh
# cli_pack.sh - ldmpack end to end: pack the fixture models (fp16; fp32 in shards with a
# bf16 text encoder), --info, --verify, bsdtar compatibility, determinism, and every bad
# input: each must exit with the right code, name the file/field/tensor, and leave no
# output or temporary file behind.
. tests/lib.sh
M=$FIX/models
OUT=$TMP/out.ldmb

# temporaries are "$TMP/.ldm-XXXXXX" (before: OUT.tmp.PID)
no_temp() { ! ls "$TMP"/.ldm-* >/dev/null 2>&1 && ! ls "$TMP"/*.tmp.* >/dev/null 2>&1; }
no_output() { [ ! -e "$OUT" ] && no_temp; }
# fail_pack DESC REGEX ARGS...: ldmpack ARGS -o OUT must exit 1 with REGEX on stderr, leaving nothing.
fail_pack() {
    d=$1; re=$2; shift 2
    expect_fail "$d" 1 "$re" "$PACK" "$@" -o "$OUT"
    check "$d: no output or temp file left" no_output
}
# mkst FILE HEADER [DATA]: write a safetensors file (DATA is a printf format for the bytes).
mkst() {
    n=${#2}
    printf "$(printf '\\%03o\\%03o\\%03o\\%03o\\000\\000\\000\\000' $((n & 255)) $((n >> 8 & 255)) \
        $((n >> 16 & 255)) $((n >> 24 & 255)))" >"$1"
    printf '%s' "$2" >>"$1"
    [ -n "$3" ] && printf "$3" >>"$1"
    return 0
}
# mkvae NAME HEADER [DATA]: a vae folder with the sd1 config and a hand-made safetensors.
mkvae() {
    mkdir -p "$TMP/$1"
    cp "$M/sd1/vae/config.json" "$TMP/$1/config.json"
    mkst "$TMP/$1/diffusion_pytorch_model.safetensors" "$2" "$3"
    echo "$TMP/$1"
}
# flip FILE OFFSET: change one byte.
flip() {
    b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
    printf "\\$(printf %03o $(((b + 1) % 256)))" | dd of="$1" bs=1 seek="$2" conv=notrunc 2>/dev/null
}
quiet() { "$@" >/dev/null 2>&1; }
member_offset() { "$PACK" --info "$1" | awk -v m="$2" '$1 == m { print $NF }'; }

# ---- packing the fixtures
check "pack sd1 (fp16)" "$PACK" -q "$M/sd1" -o "$TMP/sd1.ldmb"
check "pack sd2 (fp32 shards, bf16)" "$PACK" -q "$M/sd2" -o "$TMP/sd2.ldmb"
check "pack sd1 again" "$PACK" -q "$M/sd1" -o "$TMP/sd1b.ldmb"
check "same model, same bytes" cmp -s "$TMP/sd1.ldmb" "$TMP/sd1b.ldmb"
check "no temp files after packing" no_temp
"$PACK" --verify "$TMP/sd1.ldmb" >"$TMP/v1" 2>&1; rc=$?
check "verify sd1 exits 0" [ "$rc" -eq 0 ]
check "verify sd1 says OK" grep -q "OK" "$TMP/v1"
check "verify sd2" quiet "$PACK" --verify "$TMP/sd2.ldmb"

# ---- standard tools read it
bsdtar -tvf "$TMP/sd1.ldmb" >"$TMP/list" 2>&1; rc=$?
check "bsdtar -tvf lists the bundle" [ "$rc" -eq 0 ]
check "bsdtar sees 11 members" [ "$(wc -l <"$TMP/list")" -eq 11 ]
check "manifest.json first" sh -c "head -n1 '$TMP/list' | grep -q 'manifest.json\$'"
check "weights.bin last" sh -c "tail -n1 '$TMP/list' | grep -q 'weights.bin\$'"
for m in model_index.json unet/config.json vae/config.json text_encoder/config.json tokenizer/vocab.json \
    tokenizer/merges.txt tokenizer/tokenizer_config.json tokenizer/special_tokens_map.json \
    scheduler/scheduler_config.json; do
    check "member $m listed" grep -q " $m\$" "$TMP/list"
done
bsdtar -xOf "$TMP/sd1.ldmb" unet/config.json >"$TMP/ucfg"
check "configs stored verbatim" cmp -s "$TMP/ucfg" "$M/sd1/unet/config.json"
bsdtar -xOf "$TMP/sd1.ldmb" tokenizer/merges.txt >"$TMP/merges"
check "tokenizer symlinks followed" cmp -s "$TMP/merges" "$FIX/clip/merges.txt"

# ---- --info
"$PACK" --info "$TMP/sd1.ldmb" >"$TMP/info" 2>&1
check "info exits 0" [ $? -eq 0 ]
check "info: format version" grep -q "ldmb version 1" "$TMP/info"
check "info: content hash" grep -qE "content hash +[0-9a-f]{64}" "$TMP/info"
check "info: written by" grep -q "ldmpack 0" "$TMP/info"
for c in unet vae text_encoder tokenizer scheduler; do check "info: component $c" grep -qE "^  $c " "$TMP/info"; done
check "info: parameter counts" grep -qE "unet +[0-9]+ parameters in [0-9]+ tensors" "$TMP/info"
check "info: unet config summary" grep -q 'block_out_channels=\[32,64\]' "$TMP/info"
check "info: scheduler summary" grep -q '_class_name="PNDMScheduler"' "$TMP/info"
check "info: tokenizer" grep -q "49408 tokens" "$TMP/info"
check "info: member sizes" grep -qE "weights.bin +[0-9]+ bytes" "$TMP/info"
"$PACK" --info --json "$TMP/sd2.ldmb" >"$TMP/json" 2>&1
check "info --json" grep -q '"format_version": 1' "$TMP/json"
check "info --json components" grep -q '"prediction_type": "v_prediction"' "$TMP/json"
h1=$(awk '/content hash/ { print $3 }' "$TMP/info")
h2=$("$PACK" --info "$TMP/sd2.ldmb" | awk '/content hash/ { print $3 }')
check "different models, different hashes" [ "$h1" != "$h2" ]

# ---- usage
expect_fail "no arguments" 2 "no MODEL_DIR" "$PACK"
expect_fail "unknown option" 2 "unknown option --frobnicate" "$PACK" --frobnicate "$M/sd1" -o "$OUT"
expect_fail "no -o" 2 "no output file" "$PACK" "$M/sd1"
expect_fail "-o without a file" 2 "needs an argument" "$PACK" "$M/sd1" -o
expect_fail "--info without a bundle" 2 "one bundle" "$PACK" --info
expect_fail "--info and --verify" 2 "cannot be combined" "$PACK" --info --verify "$TMP/sd1.ldmb"
check "--help" sh -c "'$PACK' --help | grep -q 'usage: ldmpack'"
check "--version" sh -c "'$PACK' --version | grep -q 'ldmpack 0'"
check "no output after usage errors" no_output

# ---- bad model folders
fail_pack "missing model folder" "$TMP/nonexistent" "$TMP/nonexistent"
fail_pack "missing --vae folder" "--vae $TMP/novae" "$M/sd1" --vae "$TMP/novae"
cp -rL "$M/sd1" "$TMP/m"
rm "$TMP/m/unet/config.json"
fail_pack "missing unet/config.json" "m/unet/config.json: missing" "$TMP/m"
cp "$M/sd1/unet/config.json" "$TMP/m/unet/config.json"
rm -r "$TMP/m/scheduler"
fail_pack "missing scheduler folder" "m/scheduler: missing component folder" "$TMP/m"
cp -r "$M/sd1/scheduler" "$TMP/m/scheduler"
rm "$TMP/m/tokenizer/merges.txt"
fail_pack "missing merges.txt" "tokenizer/merges.txt: missing" "$TMP/m"
cp "$FIX/clip/merges.txt" "$TMP/m/tokenizer/merges.txt"
printf '{"_class_name": "PNDMScheduler",' >"$TMP/m/scheduler/scheduler_config.json"
fail_pack "malformed scheduler config" "scheduler_config.json: invalid JSON" "$TMP/m"
cp "$M/sd1/scheduler/scheduler_config.json" "$TMP/m/scheduler/"
mv "$TMP/m/unet/diffusion_pytorch_model.safetensors" "$TMP/m/unet/diffusion_pytorch_model.bin"
fail_pack "pickle weights" "diffusion_pytorch_model.bin.*safe_serialization=True" "$TMP/m"
rm "$TMP/m/unet/diffusion_pytorch_model.bin"
fail_pack "no weights" "m/unet: no weights found" "$TMP/m"
cp "$M/sd1/unet/diffusion_pytorch_model.safetensors" "$TMP/m/unet/"
check "the repaired copy packs" "$PACK" -q "$TMP/m" -o "$TMP/m.ldmb"
rm -f "$TMP/m.ldmb"
cp -r "$M/sd2/unet" "$TMP/shards"
rm "$TMP/shards/diffusion_pytorch_model-00002-of-00002.safetensors"
fail_pack "missing shard" "shard 'diffusion_pytorch_model-00002-of-00002.safetensors'" --unet "$TMP/shards"

# ---- bad safetensors
T='"decoder.conv_in.bias": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}'
fail_pack "unsupported dtype" "decoder.conv_in.bias.*dtype I64" \
    --vae "$(mkvae dt '{"decoder.conv_in.bias": {"dtype": "I64", "shape": [1], "data_offsets": [0, 8]}}' '\0\0\0\0\0\0\0\0')"
fail_pack "unknown dtype" "unknown dtype 'F8_E4M3'" \
    --vae "$(mkvae f8 '{"a": {"dtype": "F8_E4M3", "shape": [1], "data_offsets": [0, 1]}}' '\0')"
fail_pack "malformed header" "diffusion_pytorch_model.safetensors: header is not valid JSON" \
    --vae "$(mkvae js '{"a": {"dtype": ' '\0\0\0\0')"
mkdir -p "$TMP/big"; cp "$M/sd1/vae/config.json" "$TMP/big/"
printf '\377\377\377\377\377\0\0\0{}' >"$TMP/big/diffusion_pytorch_model.safetensors"
fail_pack "oversized header" "header length [0-9]+ exceeds" --vae "$TMP/big"
fail_pack "offsets out of range" "decoder.conv_in.bias.*outside the data area" \
    --vae "$(mkvae or "{$T}" '\0\0\0\0')"
fail_pack "overlapping offsets" "overlaps" --vae "$(mkvae ov \
    '{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}' \
    '\0\0\0\0\0\0\0\0\0\0\0\0')"
fail_pack "shape vs byte count" "decoder.conv_in.bias.*need 12" --vae "$(mkvae sb \
    '{"decoder.conv_in.bias": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}' '\0\0\0\0\0\0\0\0')"

# ---- values
fail_pack "NaN" "decoder.conv_in.bias.*NaN at index 1" --vae "$(mkvae nan "{$T}" '\0\0\0\0\0\0\300\177')"
fail_pack "Inf" "decoder.conv_in.bias.*Inf at index 0" --vae "$(mkvae inf "{$T}" '\0\0\200\377\0\0\0\0')"
fail_pack "out of fp16 range" "decoder.conv_in.bias.*value 100000 .*--clamp" \
    --vae "$(mkvae big2 "{$T}" '\0\120\303\107\0\0\0\0')"
"$PACK" --clamp --no-check --vae "$TMP/big2" -o "$OUT" 2>"$TMP/err"
check "--clamp packs" [ $? -eq 0 ] && [ -f "$OUT" ]
check "--clamp warns with a count" grep -q "1 value beyond" "$TMP/err"
rm -f "$OUT"
fail_pack "fp16 NaN" "NaN at index 0" --vae "$(mkvae hnan \
    '{"decoder.conv_in.bias": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}}' '\001\176')"

# ---- configs that do not match the weights
mkdir -p "$TMP/te"
cp "$M/sd1/text_encoder/model.safetensors" "$TMP/te/"
sed 's/"num_hidden_layers": 3/"num_hidden_layers": 2/' "$M/sd1/text_encoder/config.json" >"$TMP/te/config.json"
fail_pack "extra tensor (config has fewer layers)" "not used.*text_encoder.text_model.encoder.layers.2" \
    "$M/sd1" --text-encoder "$TMP/te"
sed 's/"num_hidden_layers": 3/"num_hidden_layers": 4/' "$M/sd1/text_encoder/config.json" >"$TMP/te/config.json"
fail_pack "missing tensor (config has more layers)" "text_encoder.text_model.encoder.layers.3.*missing" \
    "$M/sd1" --text-encoder "$TMP/te"
sed 's/"intermediate_size": 64/"intermediate_size": 65/' "$M/sd1/text_encoder/config.json" >"$TMP/te/config.json"
fail_pack "wrong shape" "text_encoder.text_model.encoder.layers.0.mlp.fc1.weight.*expected shape \[65, 32\], found \[64, 32\]" \
    "$M/sd1" --text-encoder "$TMP/te"
mkdir -p "$TMP/un"
cp "$M/sd1/unet/diffusion_pytorch_model.safetensors" "$TMP/un/"
cp "$M/sd2/unet/config.json" "$TMP/un/"
fail_pack "unet config from another model" "unet\.[a-z_0-9.]+" "$M/sd1" --unet "$TMP/un"

# ---- a failed pack leaves an existing output alone
echo old >"$TMP/keep.ldmb"
expect_fail "failing pack over an existing file" 1 "nonexistent" "$PACK" "$TMP/nonexistent" -o "$TMP/keep.ldmb"
check "existing output untouched" grep -qx old "$TMP/keep.ldmb"

# ---- SIGTERM while writing: the temporary file goes, no output appears
mkdir -p "$TMP/huge"
cp "$M/sd1/vae/config.json" "$TMP/huge/"
mkst "$TMP/huge/diffusion_pytorch_model.safetensors" \
    '{"decoder.conv_in.bias": {"dtype": "F32", "shape": [16777216], "data_offsets": [0, 67108864]}}'
head -c 67108864 /dev/zero >>"$TMP/huge/diffusion_pytorch_model.safetensors"
"$PACK" -q --no-check --vae "$TMP/huge" -o "$OUT" 2>/dev/null &
pid=$!
i=0
while [ $i -lt 2000 ] && no_temp && kill -0 $pid 2>/dev/null; do
    sleep 0.005; i=$((i + 1))
done
kill -TERM $pid 2>/dev/null
wait $pid 2>/dev/null; rc=$?
if [ -e "$OUT" ] && [ $rc -eq 0 ]; then
    echo "note: the SIGTERM test came too late (pack finished first); not exercised"
    rm -f "$OUT"
else
    check "SIGTERM: killed by the signal (exit $rc)" [ $rc -eq 143 ]
    check "SIGTERM: no output or temp file left" no_output
fi
rm -rf "$TMP/huge"

# ---- bad bundles
head -c 3000000 "$TMP/sd1.ldmb" >"$TMP/trunc.ldmb"
expect_fail "truncated bundle (info)" 1 "trunc.ldmb: truncated" "$PACK" --info "$TMP/trunc.ldmb"
expect_fail "truncated bundle (verify)" 1 "trunc.ldmb: truncated" "$PACK" --verify "$TMP/trunc.ldmb"
seq 1 2000 >"$TMP/text.ldmb"
expect_fail "not a bundle" 1 "text.ldmb: not a tar archive" "$PACK" --verify "$TMP/text.ldmb"
expect_fail "missing bundle" 1 "nothere.ldmb: No such file" "$PACK" --info "$TMP/nothere.ldmb"
mkdir -p "$TMP/x"
(cd "$TMP/x" && bsdtar -xf "$TMP/sd1.ldmb")
(cd "$TMP/x" && bsdtar -cf "$TMP/plain.tar" model_index.json unet/config.json)
expect_fail "a tar without a manifest" 1 "no member manifest.json" "$PACK" --info "$TMP/plain.tar"
MEMBERS="manifest.json model_index.json unet/config.json vae/config.json text_encoder/config.json tokenizer/vocab.json tokenizer/merges.txt tokenizer/tokenizer_config.json tokenizer/special_tokens_map.json scheduler/scheduler_config.json"
(cd "$TMP/x" && bsdtar -cf "$TMP/retar.ldmb" $MEMBERS weights.bin)
check "re-tarred by bsdtar still verifies" quiet "$PACK" --verify "$TMP/retar.ldmb"
(cd "$TMP/x" && bsdtar -cf "$TMP/noweights.ldmb" $MEMBERS)
expect_fail "no weights.bin" 1 "no member weights.bin" "$PACK" --info "$TMP/noweights.ldmb"
sed 's/"format_version": 1/"format_version": 7/' "$TMP/x/manifest.json" >"$TMP/x/m7" && cp "$TMP/x/m7" "$TMP/x/manifest.json"
(cd "$TMP/x" && bsdtar -cf "$TMP/v7.ldmb" $MEMBERS weights.bin)
expect_fail "other format version" 1 "format version 7, .*reads version 1" "$PACK" --info "$TMP/v7.ldmb"
(cd "$TMP/x" && bsdtar -xf "$TMP/sd1.ldmb" manifest.json)
(cd "$TMP/x" && bsdtar -cf "$TMP/dup.ldmb" $MEMBERS vae/config.json weights.bin)
expect_fail "duplicate members" 1 "duplicate member 'vae/config.json'" "$PACK" --info "$TMP/dup.ldmb"
(cd "$TMP/x" && bsdtar -cf "$TMP/dotdot.ldmb" -P -s ',^scheduler/,../scheduler/,' $MEMBERS weights.bin)
expect_fail "'..' in a member name" 1 "'../scheduler/scheduler_config.json'.*'\.\.'" "$PACK" --info "$TMP/dotdot.ldmb"
(cd "$TMP/x" && bsdtar -cf "$TMP/abs.ldmb" -P -s ',^scheduler/,/scheduler/,' $MEMBERS weights.bin)
expect_fail "leading / in a member name" 1 "'/scheduler/scheduler_config.json'.*leading '/'" "$PACK" --info "$TMP/abs.ldmb"

# ---- damaged tensor data: --verify names the tensor
cp "$TMP/sd1.ldmb" "$TMP/dmg.ldmb"
w=$(member_offset "$TMP/dmg.ldmb" weights.bin)
first=$(bsdtar -xOf "$TMP/dmg.ldmb" manifest.json | grep '"offset": 0,' | sed 's/.*"name": "\([^"]*\)".*/\1/')
check "found the first tensor ($first)" [ -n "$first" ] && [ -n "$w" ]
flip "$TMP/dmg.ldmb" $((w + 10))
check "a damaged bundle still lists" quiet "$PACK" --info "$TMP/dmg.ldmb"
expect_fail "bad checksum" 1 "1 damaged: tensor $first" "$PACK" --verify "$TMP/dmg.ldmb"
cp "$TMP/sd1.ldmb" "$TMP/dmg2.ldmb"
flip "$TMP/dmg2.ldmb" $(($(member_offset "$TMP/dmg2.ldmb" scheduler/scheduler_config.json) + 5))
expect_fail "damaged config member" 1 "member scheduler/scheduler_config.json" "$PACK" --verify "$TMP/dmg2.ldmb"

# --random-weights: configs only (SD1- and SD2-style, and the 9-channel inpainting UNet):
# the same tensors and parameter counts as the real folders, deterministic, and it generates
for m in sd1 sd2 sd1_inpaint; do
    R="$TMP/cfg-$m"; mkdir -p "$R"
    for c in unet vae text_encoder; do mkdir -p "$R/$c"; cp "$M/$m/$c/config.json" "$R/$c/"; done
    mkdir -p "$R/tokenizer" "$R/scheduler"
    cp -L "$M/$m/tokenizer/"* "$R/tokenizer/"; cp -L "$M/$m/scheduler/"* "$R/scheduler/"
    check "$m: --random-weights packs configs alone" "$PACK" -q --random-weights "$R" -o "$TMP/rw-$m.ldmb"
    "$PACK" -q --random-weights "$R" -o "$TMP/rw2-$m.ldmb"
    check "$m: --random-weights is deterministic" cmp -s "$TMP/rw-$m.ldmb" "$TMP/rw2-$m.ldmb"
    "$PACK" -q "$M/$m" -o "$TMP/real-$m.ldmb"
    "$PACK" --info --json "$TMP/rw-$m.ldmb" | grep -E '"(tensors|parameters)"' > "$TMP/rw.counts"
    "$PACK" --info --json "$TMP/real-$m.ldmb" | grep -E '"(tensors|parameters)"' > "$TMP/real.counts"
    check "$m: the random bundle has the real one's tensors and parameters" cmp -s "$TMP/rw.counts" "$TMP/real.counts"
done
check "a random-weights bundle generates" "$GEN" --bundle "$TMP/rw-sd1.ldmb" --no-history -q -n 2 -o "$TMP/rw.png" x
check "... a PNG" test -s "$TMP/rw.png"
expect_fail "--random-weights without configs" 1 'no unet, vae or text_encoder config|missing' "$PACK" --random-weights --tokenizer "$M/sd1/tokenizer" -o "$TMP/rw-none.ldmb"
check "nothing written" test ! -e "$TMP/rw-none.ldmb"

finish
