#!/bin/sh
# cli_a1111.sh - ldmgen with AUTOMATIC1111's prompt syntax (the default) and with
# --prompt-syntax plain: `ldmgen tokenize` in both, generation with weights, chunks and
# padding (the parameters text, the "ldm" chunk, the history), replay of a weighted image,
# the per-chunk embedding cache, prompt files, and bad prompts (exit 2, one clear line).
. tests/lib.sh

B1="$TMP/sd1.ldmb"; BA="$TMP/sa.ldmb"
"$PACK" -q "$FIX/models/sd1" -o "$B1" || bad "pack sd1"
"$PACK" -q "$FIX/models/sd1_a1111" -o "$BA" || bad "pack sd1_a1111"
O="$TMP/o"; mkdir -p "$O"
DB="$TMP/h.db"
G="$GEN --bundle $BA --db $DB -n 3 --seed 5"
NEG_LONG=$(for i in $(seq 1 25); do printf 'blurry, '; done)   # 100 tokens here

# ---- tokenize: the chunks and the weight of every token ----
"$GEN" tokenize --bundle "$B1" -- 'a (red:1.3) cube, [blue] sky BREAK \(x\)' > "$TMP/tok" 2> "$TMP/err"
check "tokenize exits 0 ($(head -c 200 "$TMP/err"))" test $? -eq 0
check "tokenize: chunks and A1111's token count" grep -qx '2 chunks of 77 ids, 78 tokens' "$TMP/tok"
check "tokenize: chunk 1 has 6 tokens" grep -qx 'chunk 1: 6 tokens' "$TMP/tok"
check "tokenize: (red:1.3)" grep -qx '      2    736  1.3       red</w>' "$TMP/tok"
check "tokenize: [blue] = 1/1.1" grep -qx '      5   1746  0.909091  blue</w>' "$TMP/tok"
check "tokenize: the padding on one line" grep -qx '   7-76  49407  1         <|endoftext|>' "$TMP/tok"
check "tokenize: BREAK starts chunk 2, \\( is a (" grep -qx '      1    263  1         (</w>' "$TMP/tok"
check "tokenize: one line per token, padding on one" test "$(wc -l < "$TMP/tok")" -eq 16
"$GEN" tokenize --bundle "$B1" --prompt-syntax plain -- 'a (red:1.3) cube' > "$TMP/plain"
check "tokenize plain: 77 ids on one line" test "$(wc -l < "$TMP/plain")" -eq 1 -a "$(wc -w < "$TMP/plain")" -eq 77
check "tokenize plain: brackets are text" grep -q '^49406 320 263 736 281 272 269 274 264 11353 49407 ' "$TMP/plain"
long=$(for i in $(seq 1 100); do printf 'word '; done)
"$GEN" tokenize --bundle "$B1" "$long" > "$TMP/tok" 2> "$TMP/err"
check "tokenize: 100 words, 2 chunks, no truncation" grep -qx '2 chunks of 77 ids, 100 tokens' "$TMP/tok"
check "tokenize: no truncation warning" test ! -s "$TMP/err"
expect_fail "tokenize: bad weight" 2 'ldmgen: prompt: the weight "1\.2\.3" at byte 3 is not a number' \
    "$GEN" tokenize --bundle "$B1" '(x:1.2.3)'
expect_fail "tokenize: unknown syntax" 2 'prompt syntax "foo": expected a1111 or plain' \
    "$GEN" tokenize --bundle "$B1" --prompt-syntax foo x
many=$(for i in $(seq 1 40); do printf 'a BREAK '; done)
expect_fail "tokenize: 40 chunks" 2 'prompt: more than 32 chunks of 75 tokens' "$GEN" tokenize --bundle "$B1" "$many"

# ---- generation: weights, a 2-chunk negative prompt, the prompt padded ----
$G -o "$O/w.png" -v --negative "$NEG_LONG" "a (red:1.3) cube, ((sunset))" > "$TMP/out" 2> "$TMP/err"
check "weighted run exits 0 ($(grep ldmgen: "$TMP/err" | head -c 300))" test $? -eq 0
check "-v: each chunk through the cache" grep -q 'text embedding (negative prompt, chunk 2 of 2): cache miss' "$TMP/err"
check "-v: the padding" grep -q 'text: prompt 1 chunk, negative prompt 2 chunks, padded to the same length' "$TMP/err"
check "parameters: the prompt verbatim" grep -aqE 'parameters.a \(red:1\.3\) cube, \(\(sunset\)\)$' "$O/w.png"
check "parameters: Pad conds, as A1111 writes it" grep -aq 'Seed: 5, Size: 64x64, .*Pad conds: True, Version: ldm' "$O/w.png"
check "ldm chunk: prompt_syntax a1111" grep -aq '"prompt_syntax":"a1111"' "$O/w.png"
check "history: prompt_syntax a1111" sh -c "'$GEN' history --db '$DB' --json --limit 1 | grep -q '\"prompt_syntax\":\"a1111\"'"
id=$("$GEN" history --db "$DB" --json --limit 1 | sed 's/^{"id":\([0-9]*\).*/\1/')
"$GEN" replay --db "$DB" -o "$O/r1.png" "$id" > "$TMP/out" 2> "$TMP/err"
check "replay of the weighted image by id: identical ($(head -c 300 "$TMP/err"))" grep -q 'identical' "$TMP/out"
"$GEN" replay --db "$DB" --no-history -o "$O/r2.png" "$O/w.png" > "$TMP/out" 2> "$TMP/err"
check "replay of the weighted PNG: identical ($(head -c 300 "$TMP/err"))" grep -q 'identical' "$TMP/out"
# again: every chunk from the cache, the same bytes
$G -o "$O/w2.png" -v --negative "$NEG_LONG" "a (red:1.3) cube, ((sunset))" > /dev/null 2> "$TMP/err"
check "cache: the 4 chunks are hits" test "$(grep -c 'cache hit' "$TMP/err")" -eq 4
check "cache: same bytes" cmp -s "$O/w.png" "$O/w2.png"
# another weight, the same ids: the encoder's output comes from the cache, the image differs
$G -o "$O/w3.png" -v --negative "$NEG_LONG" "a (red:1.5) cube, ((sunset))" > /dev/null 2> "$TMP/err"
check "cache: other weights reuse the chunk" grep -q 'text embedding (prompt): cache hit' "$TMP/err"
pixels() { tail -c +"$(grep -abo IDAT "$1" | head -n 1 | cut -d: -f1)" "$1"; }
pixels "$O/w.png" > "$TMP/p1"; pixels "$O/w3.png" > "$TMP/p3"
check "cache: another weight, another image" sh -c "! cmp -s '$TMP/p1' '$TMP/p3'"

# ---- without syntax both give the same pixels; with brackets they do not ----
P="a photo of an astronaut riding a horse on mars"
$G -o "$O/a.png" -q --negative "blurry" "$P"
$G -o "$O/p.png" -q --negative "blurry" --prompt-syntax plain "$P"
check "plain: ldm chunk prompt_syntax plain" grep -aq '"prompt_syntax":"plain"' "$O/p.png"
pixels "$O/a.png" > "$TMP/pa"; pixels "$O/p.png" > "$TMP/pp"
check "no brackets: the same pixels in both syntaxes" cmp -s "$TMP/pa" "$TMP/pp"
$G -o "$O/pw.png" -q --prompt-syntax plain "a (red:1.3) cube, ((sunset))"
$G -o "$O/aw.png" -q "a (red:1.3) cube, ((sunset))"
pixels "$O/pw.png" > "$TMP/pa"; pixels "$O/aw.png" > "$TMP/pp"
check "brackets: other pixels" sh -c "! cmp -s '$TMP/pa' '$TMP/pp'"
"$GEN" replay --db "$DB" --no-history -o "$O/rp.png" "$O/p.png" > "$TMP/out" 2> "$TMP/err"
check "replay of a plain PNG: identical ($(head -c 300 "$TMP/err"))" grep -q 'identical' "$TMP/out"
$G -o "$O/long.png" -q --prompt-syntax plain "$long" 2> "$TMP/err"
check "plain: a long prompt is truncated with a warning" grep -q 'longer than 75 tokens; the rest was truncated' "$TMP/err"
$G -o "$O/long2.png" -q "$long" 2> "$TMP/err"
check "a1111: no truncation" test ! -s "$TMP/err"
$G -o "$O/skip.png" -q --clip-skip 2 --negative "blurry" "(red) cube"
check "clip skip 2: A1111's line" grep -aq 'Clip skip: 2, Version' "$O/skip.png"

# ---- bad prompts: exit 2, one line, nothing written ----
expect_fail "bad weight" 2 '^ldmgen: prompt: the weight "1\.2\.3"' $G -o "$O/bad.png" '(x:1.2.3)'
check "bad weight: nothing written" test ! -e "$O/bad.png"
check "bad weight: one line" test "$(wc -l < "$TMP/err")" -eq 1
expect_fail "bad negative" 2 '^ldmgen: negative prompt: the weight' $G -o "$O/bad.png" --negative '(x:.)' cat
expect_fail "too many chunks" 2 '^ldmgen: prompt: more than 32 chunks' $G -o "$O/bad.png" "$many"
expect_fail "unknown syntax" 2 'prompt syntax "x": expected a1111 or plain' $G -o "$O/bad.png" --prompt-syntax x cat
expect_fail "a weight whose embedding is not finite" 2 \
    '^ldmgen: prompt: its weights give a text embedding that is not finite' \
    $G -o "$O/bad.png" 'a (cat:300000000000000000000000000000000000000)'
check "not finite: nothing written" test ! -e "$O/bad.png"
check "not finite: the row failed" sh -c "'$GEN' history --db '$DB' --json --limit 1 | grep -q '\"status\":\"failed\"'"
$G -o "$O/plainbad.png" -q --prompt-syntax plain '(x:1.2.3)'
check "plain: brackets are only text" test -s "$O/plainbad.png"

# ---- prompt files: "prompt_syntax" per line ----
cat > "$TMP/p.jsonl" <<'EOF'
{"prompt": "a (red:1.3) cube"}
{"prompt": "a (red:1.3) cube", "prompt_syntax": "plain"}
EOF
"$GEN" --bundle "$BA" --db "$DB" -n 2 --prompts "$TMP/p.jsonl" -o "$O/f{index}.png" -q 2> "$TMP/err"
check "prompt file: exit 0 ($(head -c 300 "$TMP/err"))" test $? -eq 0
check "prompt file: line 1 a1111" grep -aq '"prompt_syntax":"a1111"' "$O/f0.png"
check "prompt file: line 2 plain" grep -aq '"prompt_syntax":"plain"' "$O/f1.png"
printf '{"prompt": "x", "prompt_syntax": "A1111"}\n' > "$TMP/bad.jsonl"
"$GEN" --bundle "$BA" --db "$DB" -n 2 --prompts "$TMP/bad.jsonl" -o "$O/g{index}.png" -q 2> "$TMP/err"
check "prompt file: a bad prompt_syntax is refused" grep -q '"prompt_syntax": expected "a1111" or "plain"' "$TMP/err"
finish
