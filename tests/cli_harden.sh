#!/bin/sh
# cli_harden.sh - ldmpack and ldmgen on hostile files: crafted bundles and safetensors
# (tests/fuzz/corpus), configs with counts beyond core/limits.h, FIFOs given as inputs or
# outputs, outputs that are devices, output names of 246-255 bytes, and a file size limit
# (ulimit -f).  Each must give the right exit status and one message naming the file and
# the field or tensor, with no sanitizer report, nothing under the output name and no
# temporary file left.  A command that blocks (the old FIFO behaviour) is cut by timeout.
. tests/lib.sh
M=$FIX/models
C=tests/fuzz/corpus
B="$TMP/sd1.ldmb"
"$PACK" -q "$M/sd1" -o "$B" || bad "pack sd1"
OUT="$TMP/imgs"   # (expect_fail writes $TMP/out)
mkdir -p "$OUT"
P="a red apple"
T="timeout 60"

clean() { ! grep -qE 'Sanitizer|runtime error|out of memory|Aborted' "$TMP/err"; }
empty_out() { [ -z "$(ls -A "$OUT")" ]; }
no_temp() { ! ls "$1"/.ldm-* >/dev/null 2>&1 && ! ls "$1"/*.tmp.* >/dev/null 2>&1; }
# refused DESC RC REGEX CMD...: exit RC, stderr matches REGEX, no sanitizer report, $OUT empty
refused() {
    d=$1
    expect_fail "$@"
    check "$d: no sanitizer report or abort ($(head -c 200 "$TMP/err"))" clean
    check "$d: nothing in the output folder" empty_out
    rm -rf "$OUT" && mkdir -p "$OUT"
}
gen() { $T "$GEN" --bundle "$@" -n 1 --seed 1 --no-history --no-cache -q; }

# ---- 1. crafted bundles: every command that opens one refuses it, naming the file
for f in crash-pax-size-wrap crash-pax-record-length numel-wrap tensor-twice manifest-second \
         weights-not-last duplicate truncated; do
    refused "ldmpack --info $f" 1 "$f\.ldmb: " $T "$PACK" --info "$C/bundle/$f.ldmb"
    refused "ldmpack --verify $f" 1 "$f\.ldmb: " $T "$PACK" --verify "$C/bundle/$f.ldmb"
    refused "ldmgen --bundle $f" 1 "$f\.ldmb: " gen "$C/bundle/$f.ldmb" -o "$OUT/x.png" "$P"
done
expect_fail "pax size 2^64 - 512" 1 "crash-pax-size-wrap.ldmb: truncated.* says 18446744073709551104 bytes" \
    "$PACK" --info "$C/bundle/crash-pax-size-wrap.ldmb"
expect_fail "pax record length 5" 1 "crash-pax-record-length.ldmb: malformed pax header at offset 0" \
    "$PACK" --info "$C/bundle/crash-pax-record-length.ldmb"
expect_fail "element count wraps 2^64" 1 "tensor 'vae.decoder.conv_in.bias': shape has more than 2\^40 elements" \
    "$PACK" --verify "$C/bundle/numel-wrap.ldmb"
expect_fail "tensor listed twice" 1 "tensor 'vae.decoder.conv_in.bias' listed twice" \
    "$PACK" --verify "$C/bundle/tensor-twice.ldmb"
expect_fail "manifest.json second" 1 "manifest.json must be the first member" \
    "$PACK" --info "$C/bundle/manifest-second.ldmb"
expect_fail "weights.bin not last" 1 "weights.bin must be the last member, but 'scheduler/scheduler_config.json'" \
    "$PACK" --info "$C/bundle/weights-not-last.ldmb"
check "the tiny seed bundle verifies" sh -c "'$PACK' --verify '$C/bundle/vae-tiny.ldmb' >/dev/null"

# ---- 2. configs with counts beyond the limits: refused at pack time, naming the field
cfg_pack() {   # cfg_pack DESC COMPONENT FIELD VALUE REGEX
    rm -rf "$TMP/m" "$TMP/bad.ldmb"
    cp -rL "$M/sd1" "$TMP/m"
    # append the field before the final "}": the last of two equal keys is the one read
    sed '$ s/}[[:space:]]*$/, "'"$3"'": '"$4"'}/' "$M/sd1/$2/config.json" >"$TMP/m/$2/config.json"
    expect_fail "$1" 1 "$5" $T "$PACK" -q "$TMP/m" -o "$TMP/bad.ldmb"
    check "$1: no sanitizer report or abort ($(head -c 200 "$TMP/err"))" clean
    check "$1: no output, no temporary" sh -c "[ ! -e '$TMP/bad.ldmb' ] && ! ls '$TMP'/.ldm-* >/dev/null 2>&1"
}
cfg_pack "unet layers_per_block 2^31-1" unet layers_per_block 2147483647 'unet/config.json: field "layers_per_block"'
cfg_pack "unet transformer_layers_per_block 2^31-1" unet transformer_layers_per_block 2147483647 \
    'unet/config.json: field "transformer_layers_per_block"'
cfg_pack "unet block_out_channels 1e9" unet block_out_channels '[1000000000, 1000000000]' \
    'unet/config.json: field "block_out_channels"'
cfg_pack "unet sample_size 1e9" unet sample_size 1000000000 'unet/config.json: field "sample_size"'
cfg_pack "clip num_hidden_layers 2^31-1" text_encoder num_hidden_layers 2147483647 \
    'text_encoder/config.json: field "num_hidden_layers": 2147483647 is out of range'
cfg_pack "vae layers_per_block 2^31-1" vae layers_per_block 2147483647 'vae/config.json: field "layers_per_block"'
cfg_pack "vae block_out_channels 1e9" vae block_out_channels '[1e9, 1e9, 1e9, 1e9]' \
    'vae/config.json: field "block_out_channels\[0\]"'
# a bundle packed without the check: ldmgen refuses sample_size itself (it overflowed an int)
rm -rf "$TMP/m" && cp -rL "$M/sd1" "$TMP/m"
sed 's/"sample_size": [0-9]*/"sample_size": 1000000000/' "$M/sd1/unet/config.json" >"$TMP/m/unet/config.json"
"$PACK" -q --no-check "$TMP/m" -o "$TMP/ss.ldmb" 2>"$TMP/err"
check "pack sample_size 1e9 with --no-check" [ -s "$TMP/ss.ldmb" ]
refused "ldmgen: sample_size 1e9" 1 'unet/config.json: field "sample_size": 1000000000 is out of range' \
    gen "$TMP/ss.ldmb" -o "$OUT/x.png" "$P"

# ---- 3. crafted safetensors
st_vae() {   # st_vae NAME SEED: a vae folder with the sd1 config and a corpus safetensors
    mkdir -p "$TMP/$1"
    cp "$M/sd1/vae/config.json" "$TMP/$1/"
    cp "$C/safetensors/$2" "$TMP/$1/diffusion_pytorch_model.safetensors"
}
st_vae s62 crash-shape-2e62.safetensors
expect_fail "safetensors shape [2^62] F32, offsets [0, 0]" 1 \
    "s62/diffusion_pytorch_model.safetensors: tensor 'a': shape too large" $T "$PACK" -q --vae "$TMP/s62" -o "$TMP/s.ldmb"
check "shape [2^62]: no sanitizer report" clean
check "shape [2^62]: no output, no temporary" sh -c "[ ! -e '$TMP/s.ldmb' ] && ! ls '$TMP'/.ldm-* >/dev/null 2>&1"
st_vae s0 crash-no-tensors.safetensors
$T "$PACK" -q --no-check --vae "$TMP/s0" -o "$TMP/s0.ldmb" 2>"$TMP/err"
check "safetensors with no tensors packs (exit $?)" [ -s "$TMP/s0.ldmb" ]
check "no tensors: no sanitizer report" clean

# ---- 4. FIFOs: refused at once, naming the path
mkfifo "$TMP/fifo.ldmb" "$TMP/fifo.png"
refused "FIFO bundle (ldmgen)" 1 'fifo.ldmb: not a regular file \(a FIFO\)' gen "$TMP/fifo.ldmb" -o "$OUT/x.png" "$P"
refused "FIFO bundle (--info)" 1 'fifo.ldmb: not a regular file' $T "$PACK" --info "$TMP/fifo.ldmb"
refused "FIFO bundle (--verify)" 1 'fifo.ldmb: not a regular file' $T "$PACK" --verify "$TMP/fifo.ldmb"
refused "FIFO image (replay)" 1 'fifo.png: not a regular file' $T "$GEN" replay --bundle "$B" -o "$OUT/r.png" "$TMP/fifo.png"
mkdir -p "$TMP/fv"
cp "$M/sd1/vae/config.json" "$TMP/fv/"
mkfifo "$TMP/fv/diffusion_pytorch_model.safetensors"
expect_fail "FIFO safetensors" 1 'fv/diffusion_pytorch_model.safetensors: not a regular file \(a FIFO\)' \
    $T "$PACK" -q --vae "$TMP/fv" -o "$TMP/f.ldmb"
refused "FIFO as the PNG output" 1 'fifo.png: exists and is a FIFO' gen "$B" -o "$TMP/fifo.png" "$P"
check "the output FIFO is still a FIFO" [ -p "$TMP/fifo.png" ]
expect_fail "FIFO as the bundle output" 1 'fifo.ldmb: exists and is a FIFO' $T "$PACK" -q "$M/sd1" -o "$TMP/fifo.ldmb"
check "the bundle FIFO is still a FIFO" [ -p "$TMP/fifo.ldmb" ]
check "no temporary next to the FIFOs" no_temp "$TMP"

# ---- 5. an output that is a device: refused, the device left alone
ln -s /dev/null "$TMP/null.png"
refused "-o a link to /dev/null (ldmgen)" 1 'null.png: exists and is a character device' gen "$B" -o "$TMP/null.png" "$P"
expect_fail "-o a link to /dev/null (ldmpack)" 1 'null.png: exists and is a character device' \
    "$PACK" -q "$M/sd1" -o "$TMP/null.png"
check "/dev/null is still a character device" [ -c /dev/null ]
check "the link is still a link" [ -L "$TMP/null.png" ]
if [ "$(id -u)" -ne 0 ]; then   # as root a regression would replace the real device: only the link then
    refused "-o /dev/null" 1 '/dev/null: exists and is a character device' gen "$B" -o /dev/null "$P"
    check "/dev/null untouched" [ -c /dev/null ]
fi

# ---- 6. output names of 246..255 bytes (the temporary must fit NAME_MAX too)
long=$(printf 'n%.0s' $(seq 1 251))
gen "$B" -o "$OUT/$long.png" "$P" 2>"$TMP/err"
check "ldmgen -o a 255-byte name (exit $?: $(head -c 200 "$TMP/err"))" [ -s "$OUT/$long.png" ]
"$PACK" -q --vae "$M/sd1/vae" -o "$OUT/$long.ldb" 2>"$TMP/err"
check "ldmpack -o a 255-byte name (exit $?: $(head -c 200 "$TMP/err"))" [ -s "$OUT/$long.ldb" ]
check "no temporary after long names" no_temp "$OUT"
rm -f "$OUT"/*

# ---- 7. the file size limit (ulimit -f): reported like a full disk, with the reason
(ulimit -f 16; exec "$PACK" -q "$M/sd1" -o "$TMP/fsz.ldmb") >"$TMP/stdout" 2>"$TMP/err"; rc=$?
check "ldmpack under ulimit -f: exit 1, not killed by SIGXFSZ (exit $rc)" [ $rc -eq 1 ]
check "ldmpack under ulimit -f: the reason ($(head -c 200 "$TMP/err"))" grep -q 'fsz.ldmb: write failed: .*File too large' "$TMP/err"
check "ldmpack under ulimit -f: no output, no temporary" sh -c "[ ! -e '$TMP/fsz.ldmb' ] && ! ls '$TMP'/.ldm-* >/dev/null 2>&1"
(ulimit -f 1; exec $T "$GEN" --bundle "$B" -n 1 --seed 1 --no-history --no-cache -q -o "$OUT/fsz.png" "$P") \
    >"$TMP/stdout" 2>"$TMP/err"; rc=$?
check "ldmgen under ulimit -f: exit 1, not killed by SIGXFSZ (exit $rc)" [ $rc -eq 1 ]
check "ldmgen under ulimit -f: the reason ($(head -c 200 "$TMP/err"))" grep -q 'fsz.png: write failed: File too large' "$TMP/err"
check "ldmgen under ulimit -f: nothing written" empty_out

finish
