#!/bin/sh
# cli_history.sh - ldmgen with its SQLite store: database path, the prompt-embedding
# cache (hit, --no-cache, cap), history rows (ok / failed / interrupted / killed, batch,
# --no-history), the "ldm" PNG chunk and tEXt/iTXt, replay by id and from a PNG, the
# guidance-by-steps grid, --save-latent, 8 writers at once, and an unusable database.
# All on the 64x64 sd1 fixture with a few steps.
. tests/lib.sh

B="$TMP/sd1.ldmb"
"$PACK" -q "$FIX/models/sd1" -o "$B" || bad "pack sd1"
DB="$TMP/h.db"
O="$TMP/imgs"; mkdir -p "$O"
G="$GEN --bundle $B --db $DB -n 2"
ABS_GEN="$PWD/$GEN"; case "$GEN" in /*) ABS_GEN="$GEN";; esac
P="a photo of an astronaut riding a horse"

# rows DB ARGS...: number of JSON lines `ldmgen history` prints
rows() { d=$1; shift; "$GEN" history --db "$d" --json --limit 0 "$@" | wc -l; }
# field NAME: value of a JSON field in $TMP/j (strings unquoted)
field() { sed -n "s/.*\"$1\":\"\{0,1\}\([^\",}]*\).*/\1/p" "$TMP/j" | head -n 1; }
# png_size FILE: "W H" from the IHDR chunk
png_size() { od -An -tu4 --endian=big -j16 -N8 "$1" | tr -s ' ' | sed 's/^ //'; }
# wait_running DB: wait (at most ~60 s) until a 'running' row exists
wait_running() {
    i=0
    while [ $i -lt 600 ]; do
        [ "$(rows "$1" --status running)" -ge 1 ] && return 0
        sleep 0.1; i=$((i + 1))
    done
    return 1
}

# ---- the embedding cache: miss, hit, --no-cache; byte-identical images ----
$G --seed 5 -o "$O/c1.png" -v "$P" > /dev/null 2> "$TMP/err1"
check "first run exits 0" test $? -eq 0
check "first run: cache miss (-v)" grep -q 'text embedding (prompt): cache miss' "$TMP/err1"
check "first run: negative prompt encoded too" grep -q 'text embedding (negative prompt): cache miss' "$TMP/err1"
$G --seed 5 -o "$O/c2.png" -v "$P" > /dev/null 2> "$TMP/err2"
check "second run: prompt cache hit" grep -q 'text embedding (prompt): cache hit' "$TMP/err2"
check "second run: negative cache hit" grep -q 'text embedding (negative prompt): cache hit' "$TMP/err2"
check "cache hit: byte-identical PNG" cmp -s "$O/c1.png" "$O/c2.png"
$G --seed 5 -o "$O/c3.png" -v --no-cache "$P" > /dev/null 2> "$TMP/err3"
check "--no-cache: no hit" sh -c "! grep -q 'cache hit' '$TMP/err3'"
check "--no-cache: says so" grep -q 'cache not used' "$TMP/err3"
check "--no-cache: byte-identical PNG" cmp -s "$O/c1.png" "$O/c3.png"
$G --seed 5 -o "$O/c4.png" --no-cache -q "never cached prompt"
$G --seed 5 -o "$O/c4.png" --overwrite -v "never cached prompt" > /dev/null 2> "$TMP/err4"
check "--no-cache writes nothing to the cache" grep -q 'text embedding (prompt): cache miss' "$TMP/err4"
$G --seed 5 -g 1 -o "$O/c6.png" -v "$P" > /dev/null 2> "$TMP/err6"
check "-g 1: prompt only, from the cache" grep -q 'text embedding (prompt): cache hit' "$TMP/err6"
check "-g 1: no negative prompt" sh -c "! grep -q 'negative prompt' '$TMP/err6'"
$G --seed 5 --clip-skip 2 -o "$O/c7.png" -v "$P" > /dev/null 2> "$TMP/err7"
check "clip skip is part of the key (miss)" grep -q 'text embedding (prompt): cache miss' "$TMP/err7"
check "A1111 syntax: the negative prompt at clip skip 2 too (miss)" grep -q 'text embedding (negative prompt): cache miss' "$TMP/err7"
$G --seed 5 --clip-skip 2 --prompt-syntax plain --no-history -o "$O/c8.png" -v "$P" > /dev/null 2> "$TMP/err8"
check "plain syntax: the negative prompt uses the last layer (hit)" grep -q 'text embedding (negative prompt): cache hit' "$TMP/err8"
check "plain syntax: the prompt at clip skip 2 (hit)" grep -q 'text embedding (prompt): cache hit' "$TMP/err8"
# (last: a cap of 0 empties the cache)
$G --seed 5 -o "$O/c5.png" --cache-max-mb 0 -q "capped prompt"
$G --seed 5 -o "$O/c5.png" --overwrite -v --cache-max-mb 0 "capped prompt" > /dev/null 2> "$TMP/err5"
check "--cache-max-mb 0 keeps nothing" grep -q 'text embedding (prompt): cache miss' "$TMP/err5"
expect_fail "--cache-max-mb x" 2 'cache size "x"' $G --cache-max-mb x -o "$O/x.png" "$P"

# ---- what a row holds ----
"$GEN" history --db "$DB" --json --limit 1 --grep astronaut > "$TMP/j"
check "row: status ok" test "$(field status)" = ok
check "row: seed" test "$(field seed)" = 5
check "row: steps" test "$(field steps)" = 2
check "row: scheduler" test "$(field scheduler)" = pndm
check "row: clip_skip 2" test "$(field clip_skip)" = 2
check "row: size" test "$(field width)x$(field height)" = 64x64
check "row: backend" test "$(field backend)" = cpu
check "row: bundle path" test "$(field bundle_path)" = "$B"
check "row: bundle hash" grep -q '"bundle_hash":"[0-9a-f]\{64\}"' "$TMP/j"
check "row: output path" test "$(field output_path)" = "$O/c7.png"
check "row: sha256 of the PNG" test "$(field png_sha256)" = "$(sha256sum < "$O/c7.png" | cut -c1-64)"
check "row: timings" grep -qE '"t_text_ms":[0-9.]+,"t_sampling_ms":[0-9.]+,"t_decode_ms":[0-9.]+,"t_total_ms":[0-9.]+' "$TMP/j"
check "row: ldm version" grep -q '"ldm_version":"[0-9]' "$TMP/j"
"$GEN" show --db "$DB" "$(field id)" > "$TMP/show"
check "show prints the record" grep -q "^png_sha256 *$(field png_sha256)" "$TMP/show"
n0=$(rows "$DB")
$G --seed 5 -o "$O/nh.png" --no-history -q "$P"
check "--no-history: image written" test -s "$O/nh.png"
check "--no-history: no row" test "$(rows "$DB")" -eq "$n0"
expect_fail "--no-history --require-history" 2 'contradict' $G --no-history --require-history -o "$O/x.png" "$P"

# ---- a batch: one row per image ----
$G --seed 10 -b 2 -o "$O/batch.png" -q "$P"
"$GEN" history --db "$DB" --json --seed 11 > "$TMP/j"
check "batch: image 2 has seed 11" test "$(field seed)" = 11
check "batch: batch_size 2, batch_index 1" grep -q '"batch_size":2,"batch_index":1' "$TMP/j"
check "batch: its own file" test "$(field output_path)" = "$O/batch-0002.png"
check "batch: its own sha" test "$(field png_sha256)" = "$(sha256sum < "$O/batch-0002.png" | cut -c1-64)"
check "batch: seed 10 recorded" test "$(rows "$DB" --seed 10)" -eq 1

# ---- the database path: --db, LDM_DB, XDG_DATA_HOME, HOME ----
( unset LDM_DB; XDG_DATA_HOME="$TMP/xdg" "$GEN" --bundle "$B" -n 1 --seed 1 -o "$O/p.png" --overwrite -q "$P" )
check "XDG_DATA_HOME/ldm/ldm.db" test "$(rows "$TMP/xdg/ldm/ldm.db")" -eq 1
( unset LDM_DB XDG_DATA_HOME; HOME="$TMP/home" "$GEN" --bundle "$B" -n 1 --seed 1 -o "$O/p.png" --overwrite -q "$P" )
check "~/.local/share/ldm/ldm.db" test "$(rows "$TMP/home/.local/share/ldm/ldm.db")" -eq 1
( LDM_DB="$TMP/env.db" "$GEN" --bundle "$B" -n 1 --seed 1 -o "$O/p.png" --overwrite -q "$P"
  LDM_DB="$TMP/env.db" "$GEN" --bundle "$B" -n 1 --seed 1 --db "$TMP/opt.db" -o "$O/p.png" --overwrite -q "$P" )
check "LDM_DB" test "$(rows "$TMP/env.db")" -eq 1
check "--db wins over LDM_DB" test "$(rows "$TMP/opt.db")" -eq 1
check "history reads LDM_DB" test "$(LDM_DB="$TMP/env.db" "$GEN" history --json | wc -l)" -eq 1

# ---- a prompt named like a subcommand, after -- ----
$G --seed 1 -o "$O/hist.png" -q -- history
check "-- history generates" test -s "$O/hist.png"
check "prompt \"history\" recorded" test "$(rows "$DB" --grep history)" -ge 1
check "history as a prompt: in the PNG" grep -aq '"prompt":"history"' "$O/hist.png"

# ---- the PNG chunks ----
check "ldm chunk (tEXt)" grep -aq 'tEXtldm' "$O/c1.png"
check "ldm chunk: JSON" grep -aq '{"ldm_version":"' "$O/c1.png"
for k in prompt negative_prompt seed steps guidance scheduler karras eta timestep_spacing width height clip_skip batch_size batch_index bundle_hash model_name; do
    grep -aq "\"$k\":" "$O/c1.png" || bad "ldm chunk lacks $k"
done
ok
# the bundle is named by its content hash: no path (home folders, machine layout) in the PNG
check "no bundle path in the chunks" sh -c "! grep -aq 'bundle_path' '$O/c1.png' && ! grep -aqF '$B' '$O/c1.png'"
check "output name kept out of the chunks" sh -c "! grep -aq 'c1.png' '$O/c1.png'"
$G --seed 5 -o "$O/u.png" -q "水墨画 of a crane"
check "non-Latin-1 prompt: iTXt parameters" grep -aq 'iTXtparameters' "$O/u.png"
check "non-Latin-1 prompt: UTF-8 text" grep -aq '水墨画 of a crane' "$O/u.png"
$G --seed 5 -o "$O/l1.png" -q "café crème"
check "Latin-1 prompt: tEXt parameters" grep -aq 'tEXtparameters' "$O/l1.png"
check "Latin-1 prompt: no iTXt" sh -c "! grep -aq 'iTXt' '$O/l1.png'"
check "Latin-1 prompt: stored as Latin-1" env LC_ALL=C grep -aq "$(printf 'caf\351 cr\350me')" "$O/l1.png"
expect_fail "invalid UTF-8 prompt" 2 'prompt: invalid UTF-8' $G -o "$O/bad.png" "$(printf 'a\377b')"
check "invalid UTF-8: nothing written" test ! -e "$O/bad.png"

# ---- replay ----
id=$(LDM_DB="$DB" "$GEN" history --json --limit 0 | grep "\"output_path\":\"$O/c1.png\"" | sed 's/^{"id":\([0-9]*\).*/\1/')
( cd "$O" && "$ABS_GEN" replay --db "$DB" "$id" > "$TMP/rout" 2> "$TMP/rerr" ); rc=$?
check "replay ID exits 0 ($(cat "$TMP/rerr"))" test $rc -eq 0
check "replay ID: default name replay-ID.png" cmp -s "$O/c1.png" "$O/replay-$id.png"
check "replay ID: says identical" grep -q "identical to generation $id" "$TMP/rout"
"$GEN" history --db "$DB" --json --limit 1 > "$TMP/j"
check "replay recorded with replay_of" test "$(field replay_of)" = "$id"
"$GEN" replay --db "$DB" -o "$O/r-batch.png" "$(LDM_DB="$DB" "$GEN" history --json --seed 11 | sed 's/^{"id":\([0-9]*\).*/\1/')" > "$TMP/rout"
check "replay of batch image 2: identical" grep -q identical "$TMP/rout"
check "replay of batch image 2: same bytes" cmp -s "$O/r-batch.png" "$O/batch-0002.png"
( cd "$O" && "$ABS_GEN" replay --db "$DB" batch-0002.png > "$TMP/rout" 2> "$TMP/rerr" ); rc=$?
check "replay PNG exits 0 ($(cat "$TMP/rerr"))" test $rc -eq 0
check "replay PNG: pixels and bytes" grep -q 'identical to batch-0002.png (PNG bytes and pixels' "$TMP/rout"
check "replay PNG: default name" cmp -s "$O/replay-batch-0002.png" "$O/batch-0002.png"
"$GEN" replay --db "$DB" -o "$O/r-u.png" "$O/u.png" > /dev/null
check "replay PNG with a unicode prompt: exit 0" test $? -eq 0
"$PACK" -q "$FIX/models/sd2" -o "$TMP/sd2.ldmb"
expect_fail "replay with another bundle is refused" 1 "sd2.ldmb has content hash [0-9a-f]{64}, but .* hash [0-9a-f]{64}" \
    "$GEN" replay --db "$DB" --bundle "$TMP/sd2.ldmb" -o "$O/r-x.png" "$id"
check "refused replay: nothing written" test ! -e "$O/r-x.png"
cp "$B" "$TMP/moved.ldmb"
mv "$B" "$TMP/away.ldmb"
expect_fail "recorded bundle gone: asks for --bundle" 1 'does not exist; give the bundle with --bundle' \
    "$GEN" replay --db "$DB" -o "$O/r-x.png" "$id"
"$GEN" replay --db "$DB" --bundle "$TMP/moved.ldmb" -o "$O/r-m.png" "$id" > "$TMP/rout" 2>&1
check "replay with a moved bundle of the same hash: identical" grep -q identical "$TMP/rout"
mv "$TMP/away.ldmb" "$B"
expect_fail "replay: unknown id" 1 'no generation 99999' "$GEN" replay --db "$DB" 99999
expect_fail "replay: not a file" 1 'nofile.png' "$GEN" replay --db "$DB" "$TMP/nofile.png"
expect_fail "replay: no argument" 2 'expected one' "$GEN" replay --db "$DB"

# ---- grid: guidance along rows, steps along columns, one seed ----
$G --grid g=1,7.5 --grid n=1,2,3 --seed 3 -o "$O/grid.png" -v "a red apple" > "$TMP/gout" 2> "$TMP/gerr"
check "grid exits 0 ($(head -c 300 "$TMP/gerr"))" test $? -eq 0
check "grid: one file" test "$(cat "$TMP/gout")" = "$O/grid.png"
check "grid: 3 x 2 cells of 64x64 (shown at 128x128) with titles" test "$(png_size "$O/grid.png")" = "392 284"
check "grid: text encoded once, reused" test "$(grep -c 'text embedding (prompt): reused' "$TMP/gerr")" -eq 5
"$GEN" history --db "$DB" --json --limit 1 > "$TMP/j"
gid=$(field grid_id)
check "grid: cells have a grid id" test -n "$gid" -a "$gid" != null
check "grid: history --grid lists 6 cells" test "$(rows "$DB" --grid "$gid")" -eq 6
check "grid: all ok" test "$(rows "$DB" --grid "$gid" --status ok)" -eq 6
check "grid: one seed" test "$(rows "$DB" --grid "$gid" --seed 3)" -eq 6
check "grid: cell g=7.5 n=2" test "$("$GEN" history --db "$DB" --json --grid "$gid" | grep -c '"steps":2,"guidance":7.5,')" -eq 1
check "grid: the grid in every row" test "$("$GEN" history --db "$DB" --json --grid "$gid" | grep -c "\"output_path\":\"$O/grid.png\"")" -eq 6
"$GEN" replay --db "$DB" -o "$O/cell.png" "$(field id)" > "$TMP/rout"
check "grid: a cell replays to its recorded PNG" grep -q identical "$TMP/rout"
$G --seed 3 -g 7.5 -n 3 -o "$O/cell-direct.png" -q "a red apple"
check "grid: a cell equals the single image" cmp -s "$O/cell.png" "$O/cell-direct.png"
"$GEN" replay --db "$DB" -o "$O/grid2.png" "$O/grid.png" > "$TMP/rout"
check "grid: replay of the grid PNG" grep -q 'identical to .*grid.png (PNG bytes and pixels' "$TMP/rout"
$G --grid n=1,2 -g 5 --seed 3 -o "$O/grid1.png" -q "a red apple"
check "grid: one axis" test "$(png_size "$O/grid1.png")" = "262 143"
expect_fail "grid: bad axis" 2 "expected g=LIST" $G --grid x=1 -o "$O/x.png" "$P"
expect_fail "grid: bad value" 2 "steps must be whole" $G --grid n=2.5 -o "$O/x.png" "$P"
expect_fail "grid: axis twice" 2 "given twice" $G --grid g=1 --grid g=2 -o "$O/x.png" "$P"
expect_fail "grid: with -b" 2 "-b does not apply" $G --grid g=1,2 -b 2 -o "$O/x.png" "$P"

# ---- --save-latent ----
$G --seed 3 -o "$O/img.png" --save-latent "$O/lat.png" -q "$P"
check "latent: written at the image size" test "$(png_size "$O/lat.png")" = "64 64"
check "latent: says what it is" grep -aq 'final latent 4x8x8' "$O/lat.png"
$G --seed 3 -b 2 -o "$O/bimg.png" --save-latent "$O/blat.png" -q "$P"
check "latent: numbered like the images" test -s "$O/blat-0001.png" -a -s "$O/blat-0002.png" -a ! -e "$O/blat.png"
$G --grid g=1,7.5 --seed 3 -o "$O/lg.png" --save-latent "$O/lgl.png" -q "$P"
check "latent: grid of latents" test "$(png_size "$O/lgl.png")" = "$(png_size "$O/lg.png")"
expect_fail "replay of a latent picture: no ldm chunk" 1 'no "ldm" text chunk' "$GEN" replay --db "$DB" "$O/lat.png"
expect_fail "latent: same name" 2 'same file' $G -o "$O/same.png" --save-latent "$O/same.png" "$P"

# ---- failed: the PNG cannot be put in place -> 'failed' with the message ----
# (400 steps, about 2.5 s here: the directory must be made while the run is still going;
# 40 steps finished before it on a clean CI clone once the CPU kernels got faster)
$G -n 400 --seed 1 -o "$O/f.png" -q "fails at the end" 2> "$TMP/ferr" &
pid=$!
wait_running "$DB" || bad "failed run: no running row"
mkdir "$O/f.png"; : > "$O/f.png/keep"
wait $pid; rc=$?
check "failed run exits 1 (got $rc)" test $rc -eq 1
"$GEN" history --db "$DB" --json --grep "fails at the end" > "$TMP/j"
check "failed run: status failed" test "$(field status)" = failed
check "failed run: error recorded" grep -q '"error":".*f.png' "$TMP/j"
rm -rf "$O/f.png"

# ---- interrupted: SIGTERM -> 'interrupted', exit 130, no file ----
$G -n 1000 --scheduler euler --seed 1 -o "$O/int.png" -q "interrupted run" 2> /dev/null &
pid=$!
wait_running "$DB" || bad "interrupted run: no running row"
kill -TERM $pid
wait $pid; rc=$?
check "SIGTERM exits 130 (got $rc)" test $rc -eq 130
check "SIGTERM: no PNG" test ! -e "$O/int.png"
check "SIGTERM: status interrupted" test "$(rows "$DB" --grep "interrupted run" --status interrupted)" -eq 1

# ---- SIGKILL in the middle: database intact, run interrupted (never ok), no PNG ----
$G -n 1000 --scheduler euler --seed 1 -o "$O/kill.png" -q "killed run" 2> /dev/null &
pid=$!
wait_running "$DB" || bad "killed run: no running row"
sleep 0.5
kill -KILL $pid
wait $pid 2> /dev/null
check "SIGKILL: no PNG under the final name" test ! -e "$O/kill.png"
"$GEN" history --db "$DB" --check > "$TMP/chk" 2>&1
check "SIGKILL: integrity check ok ($(cat "$TMP/chk"))" grep -q '^ok' "$TMP/chk"
check "SIGKILL: shown as interrupted" test "$(rows "$DB" --grep "killed run" --status interrupted)" -eq 1
check "SIGKILL: never ok" test "$(rows "$DB" --grep "killed run" --status ok)" -eq 0
check "SIGKILL: nothing left running" test "$(rows "$DB" --status running)" -eq 0

# ---- 8 writers at once ----
CDB="$TMP/conc.db"
i=1; pids=""
while [ $i -le 8 ]; do
    "$GEN" --bundle "$B" --db "$CDB" -n 2 --seed $i -o "$O/conc$i.png" -q "writer $i" 2> "$TMP/cerr$i" &
    pids="$pids $!"; i=$((i + 1))
done
fails=0
for p in $pids; do wait $p || fails=$((fails + 1)); done
check "8 writers: all exit 0" test $fails -eq 0
check "8 writers: no 'locked'" sh -c "! cat '$TMP'/cerr* | grep -qi locked"
check "8 writers: no warnings" sh -c "! cat '$TMP'/cerr* | grep -q ."
check "8 writers: 8 rows" test "$(rows "$CDB")" -eq 8
check "8 writers: all ok" test "$(rows "$CDB" --status ok)" -eq 8
i=1; while [ $i -le 8 ]; do
    [ "$(rows "$CDB" --seed $i --grep "writer $i")" -eq 1 ] || bad "8 writers: row $i missing"
    i=$((i + 1)); done; ok
"$GEN" history --db "$CDB" --check > /dev/null 2>&1
check "8 writers: integrity ok" test $? -eq 0

# ---- a database that cannot be opened: image written anyway, one warning ----
: > "$TMP/afile"
$G --seed 1 --db "$TMP/afile/ldm.db" -o "$O/nodb.png" "$P" > /dev/null 2> "$TMP/err"
check "unusable db: exit 0" test $? -eq 0
check "unusable db: image written" test -s "$O/nodb.png"
check "unusable db: one warning line" test "$(wc -l < "$TMP/err")" -eq 1
check "unusable db: says history not recorded" grep -q 'warning: history not recorded: .*afile' "$TMP/err"
rm -f "$O/nodb.png"
$G --seed 1 --db "$TMP/afile/ldm.db" --require-history -o "$O/nodb.png" "$P" > /dev/null 2> "$TMP/err"
check "--require-history: exit 1" test $? -eq 1
check "--require-history: image still written" test -s "$O/nodb.png"
check "--require-history: says so" grep -q 'history not recorded (--require-history)' "$TMP/err"
if [ "$(id -u)" -ne 0 ]; then
    mkdir -p "$TMP/rodir"; chmod 555 "$TMP/rodir"
    $G --seed 1 --db "$TMP/rodir/sub/ldm.db" -o "$O/ro.png" "$P" > /dev/null 2> "$TMP/err"
    check "read-only folder: exit 0" test $? -eq 0
    check "read-only folder: image written" test -s "$O/ro.png"
    check "read-only folder: warning" grep -q 'history not recorded' "$TMP/err"
    chmod 755 "$TMP/rodir"
fi

finish
