#!/bin/sh
# cli_compat.sh - a folder written by the current releases (tests/fixtures/models/sd1_tf5:
# diffusers 0.42, transformers 5; tokenizer.json only, text encoder weights without the
# "text_model." prefix) through ldmpack and ldmgen: pack, --info, --verify, determinism,
# tokenize, generate; which tokenizer files are taken when a folder has several; and bad
# input (tokenizer.json without model.vocab, malformed merges, wrong BPE settings, text
# encoder names mixing both layouts): exit 1, the file and field named, nothing written.
. tests/lib.sh
M=$FIX/models
T5=$M/sd1_tf5
B=$TMP/tf5.ldmb
OUT=$TMP/out.ldmb
P="a photo of an astronaut riding a horse on mars"

no_output() { [ ! -e "$OUT" ] && ! ls "$OUT".tmp.* >/dev/null 2>&1; }
fail_pack() {
    d=$1; re=$2; shift 2
    expect_fail "$d" 1 "$re" "$PACK" "$@" -o "$OUT"
    check "$d: no output or temp file left" no_output
}
members() { bsdtar -tf "$1" | tr '\n' ' '; }
has_member() { bsdtar -tf "$1" | grep -x "$2" >/dev/null; }

# ---- what the folder is: the layout transformers 5 writes
check "fixture: tokenizer.json only" test "$(ls "$T5/tokenizer" | tr '\n' ' ')" = "tokenizer.json tokenizer_config.json "
check "fixture: no text_model. prefix" sh -c "! grep -aq '\"text_model\\.' '$T5/text_encoder/model.safetensors'"

# ---- pack, verify, info
"$PACK" "$T5" -o "$B" >"$TMP/out" 2>&1; rc=$?
check "pack sd1_tf5 exits 0 ($(head -c 300 "$TMP/out"))" [ "$rc" -eq 0 ]
check "verify" sh -c "'$PACK' --verify '$B' | grep -q OK"
check "tokenizer.json stored" has_member "$B" tokenizer/tokenizer.json
check "no vocab.json or merges.txt made up" sh -c "! bsdtar -tf '$B' | grep -qE 'vocab.json|merges.txt'"
bsdtar -xOf "$B" tokenizer/tokenizer.json >"$TMP/tj"
check "tokenizer.json stored verbatim" cmp -s "$TMP/tj" "$T5/tokenizer/tokenizer.json"
bsdtar -xOf "$B" manifest.json >"$TMP/manifest"
check "text encoder under text_encoder.text_model." grep -q '"text_encoder.text_model.embeddings.token_embedding.weight"' "$TMP/manifest"
check "no unprefixed text encoder name" sh -c "! grep -q '\"text_encoder.embeddings' '$TMP/manifest'"
"$PACK" -q "$T5" -o "$TMP/tf5b.ldmb"
check "same folder, same bytes" cmp -s "$B" "$TMP/tf5b.ldmb"
"$PACK" --info "$B" >"$TMP/info" 2>&1
check "info exits 0" [ $? -eq 0 ]
for c in unet vae text_encoder tokenizer scheduler; do check "info: component $c" grep -qE "^  $c " "$TMP/info"; done
check "info: tokenizer from tokenizer.json" grep -q "tokenizer    2514 tokens, 2000 merges (from tokenizer/tokenizer.json)" "$TMP/info"
check "info: tokenizer config" grep -q 'model_max_length=77 pad_token="<|endoftext|>"' "$TMP/info"
check "info: text encoder vocab" grep -q "vocab_size=2514" "$TMP/info"
check "info: member tokenizer/tokenizer.json" grep -qE "^  tokenizer/tokenizer.json +[0-9]+ bytes" "$TMP/info"
"$PACK" --info --json "$B" >"$TMP/json" 2>&1
check "info --json: source" grep -q '"source": "tokenizer/tokenizer.json"' "$TMP/json"
check "info --json: vocab_size" grep -q '"vocab_size": 2514' "$TMP/json"
"$PACK" -q "$M/sd1" -o "$TMP/sd1.ldmb"
h1=$("$PACK" --info "$B" | awk '/content hash/ { print $3 }')
h2=$("$PACK" --info "$TMP/sd1.ldmb" | awk '/content hash/ { print $3 }')
check "content hash differs from sd1" [ -n "$h1" ] && [ "$h1" != "$h2" ]

# ---- ldmgen: tokenize and generate
line=$(grep -F '"text": "a photo of an astronaut riding a horse on mars, highly detailed, 4k"' \
    "$FIX/expected_tf5/tokenizer_cases.jsonl")
want=$(printf '%s\n' "$line" | sed 's/.*"input_ids_sd1": \[\([^]]*\)\].*/\1/' | tr -d ',')
got=$("$GEN" tokenize --bundle "$B" --prompt-syntax plain -- "a photo of an astronaut riding a horse on mars, highly detailed, 4k"); rc=$?
check "tokenize exits 0" [ "$rc" -eq 0 ]
check "tokenize: transformers 5's ids" [ -n "$want" ] && [ "$got" = "$want" ]
mkdir -p "$TMP/img"
"$GEN" --bundle "$B" -n 20 --seed 42 -o "$TMP/img/a.png" --no-history "$P" >"$TMP/stdout" 2>"$TMP/err"
check "generate exits 0 ($(head -c 300 "$TMP/err"))" [ $? -eq 0 ]
check "generate: the PNG" test "$(head -c 8 "$TMP/img/a.png" | od -An -c | tr -d ' ')" = '211PNG\r\n032\n'
check "generate: 64x64" test "$(od -An -tu1 -j16 -N8 "$TMP/img/a.png" | tr -s ' ')" = " 0 0 0 64 0 0 0 64"
check "generate: parameters" grep -aqE "Steps: 20, Sampler: PLMS, CFG scale: 7\.5, Seed: 42, Size: 64x64" "$TMP/img/a.png"
"$GEN" --bundle "$B" -n 20 --seed 42 -o "$TMP/img/b.png" -q --no-history "$P"
check "generate: same seed, same bytes" cmp -s "$TMP/img/a.png" "$TMP/img/b.png"
"$GEN" --bundle "$B" -n 4 --seed 1 --scheduler euler_a -o "$TMP/img/c.png" -q --no-history "a <|ENDOFTEXT|>!! b"
check "generate: euler_a, special-token text in the prompt" test -s "$TMP/img/c.png"

# ---- which tokenizer files a folder's tokenizer/ gives
cp -rL "$M/sd1" "$TMP/both"
cp "$T5/tokenizer/tokenizer.json" "$TMP/both/tokenizer/"
check "vocab.json + merges.txt + tokenizer.json packs" "$PACK" -q "$TMP/both" -o "$TMP/both.ldmb"
check "  vocab.json + merges.txt are taken" sh -c "bsdtar -tf '$TMP/both.ldmb' | grep -qx tokenizer/merges.txt"
check "  tokenizer.json is not" sh -c "! bsdtar -tf '$TMP/both.ldmb' | grep -qx tokenizer/tokenizer.json"
cp -r "$T5" "$TMP/m"
cp "$FIX/clip/vocab.json" "$TMP/m/tokenizer/"
check "vocab.json without merges.txt: tokenizer.json is taken" "$PACK" -q "$TMP/m" -o "$TMP/m.ldmb"
check "  (members: $(members "$TMP/m.ldmb"))" sh -c "bsdtar -tf '$TMP/m.ldmb' | grep -qx tokenizer/tokenizer.json && ! bsdtar -tf '$TMP/m.ldmb' | grep -qx tokenizer/vocab.json"
rm "$TMP/m/tokenizer/vocab.json" "$TMP/m.ldmb"
mv "$TMP/m/tokenizer/tokenizer.json" "$TMP/tj.orig"
fail_pack "no tokenizer files" "m/tokenizer/vocab.json: missing \(a tokenizer needs vocab.json and merges.txt, or tokenizer.json\)" "$TMP/m"

# ---- bad tokenizer.json: the file and the field are named
tj=$TMP/m/tokenizer/tokenizer.json
sed 's/^    "vocab": {/    "vocab_renamed": {/' "$TMP/tj.orig" >"$tj"
fail_pack "tokenizer.json without model.vocab" "m/tokenizer/tokenizer.json: field model.vocab: missing" "$TMP/m"
sed 's/^    "vocab": {/    "vocab": [], "x": {/' "$TMP/tj.orig" >"$tj"
fail_pack "model.vocab not an object" "m/tokenizer/tokenizer.json: field model.vocab: expected a JSON object" "$TMP/m"
sed 's/^    "merges": \[/    "merges": 5, "x": [/' "$TMP/tj.orig" >"$tj"
fail_pack "model.merges not an array" "m/tokenizer/tokenizer.json: field model.merges: expected an array" "$TMP/m"
sed 's/^    "merges": \[/    "merges_renamed": [/' "$TMP/tj.orig" >"$tj"
fail_pack "no model.merges" "m/tokenizer/tokenizer.json: field model.merges: missing" "$TMP/m"
# the first merge ["i", "n"] becomes ["i", "x", "n"]
awk '/^    "merges": \[/ { m = NR } m && NR == m + 2 { print; print "        \"x\","; next } { print }' \
    "$TMP/tj.orig" >"$tj"
fail_pack "a merge of three tokens" "m/tokenizer/tokenizer.json: field model.merges\[0\]: expected \"a b\" .*\[\"i\",\"x\",\"n\"\]" "$TMP/m"
# the second merge ["t", "h"] becomes ["t", "qqqq"]
awk '/^    "merges": \[/ { m = NR } m && NR == m + 7 { print "        \"qqqq\""; next } { print }' \
    "$TMP/tj.orig" >"$tj"
fail_pack "a merge token not in the vocabulary" "m/tokenizer/tokenizer.json: field model.merges\[1\]: token \"qqqq\" is not in model.vocab" "$TMP/m"
sed 's/"type": "BPE"/"type": "WordPiece"/' "$TMP/tj.orig" >"$tj"
fail_pack "not a BPE model" "m/tokenizer/tokenizer.json: field model.type: \"WordPiece\" is not supported" "$TMP/m"
sed 's|"end_of_word_suffix": "</w>"|"end_of_word_suffix": null|' "$TMP/tj.orig" >"$tj"
fail_pack "no </w> suffix" "m/tokenizer/tokenizer.json: field model.end_of_word_suffix: expected \"</w>\"" "$TMP/m"
sed 's/"Regex": "<\\\\|startoftext/"Regex": "x<\\\\|startoftext/' "$TMP/tj.orig" >"$tj"
fail_pack "another pre-tokenizer pattern" "m/tokenizer/tokenizer.json: field pre_tokenizer.pretokenizers\[0\].pattern.Regex: .* is not CLIP's pattern" "$TMP/m"
head -c 5000 "$TMP/tj.orig" >"$tj"
fail_pack "truncated tokenizer.json" "m/tokenizer/tokenizer.json: invalid JSON" "$TMP/m"
cp "$TMP/tj.orig" "$tj"
printf '{"pad_token": "<pad>", "model_max_length": 77}\n' >"$TMP/m/tokenizer/tokenizer_config.json"
fail_pack "pad token not in the vocabulary" "m/tokenizer/tokenizer_config.json: pad_token \"<pad>\" is not in model.vocab" "$TMP/m"
cp "$T5/tokenizer/tokenizer_config.json" "$TMP/m/tokenizer/"
check "the repaired copy packs" "$PACK" -q "$TMP/m" -o "$TMP/m.ldmb"

# ---- text encoder names: one layout or the other
mkdir -p "$TMP/te"
cp "$T5/text_encoder/config.json" "$TMP/te/"
H='{"text_model.embeddings.position_embedding.weight": {"dtype": "F16", "shape": [1], "data_offsets": [0, 2]}, "encoder.layers.0.layer_norm1.bias": {"dtype": "F16", "shape": [1], "data_offsets": [2, 4]}}'
n=${#H}
printf "$(printf '\\%03o\\%03o\\000\\000\\000\\000\\000\\000' $((n & 255)) $((n >> 8 & 255)))" >"$TMP/te/model.safetensors"
printf '%s' "$H" >>"$TMP/te/model.safetensors"
printf '\0\0\0\0' >>"$TMP/te/model.safetensors"
fail_pack "mixed text_model. prefixes" "te: text encoder tensor names mix two layouts: 'text_model.embeddings.position_embedding.weight' .*'encoder.layers.0.layer_norm1.bias' .*transformers 5" \
    "$T5" --text-encoder "$TMP/te"
fail_pack "mixed prefixes, --no-check too" "mix two layouts" --no-check --text-encoder "$TMP/te"
# the old layout with the new tokenizer files, and the reverse, pack
check "sd1 text encoder (text_model.) with sd1_tf5's tokenizer.json" "$PACK" -q --no-check \
    --text-encoder "$M/sd1/text_encoder" --tokenizer "$T5/tokenizer" -o "$TMP/x1.ldmb"
check "sd1_tf5 text encoder alone" "$PACK" -q --text-encoder "$T5/text_encoder" -o "$TMP/x2.ldmb"

finish
