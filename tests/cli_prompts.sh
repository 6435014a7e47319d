#!/bin/sh
# cli_prompts.sh - ldmgen --prompts on the default bundle: text and JSON lines, seeds
# base + index (the same bytes as single runs), -o patterns, shards (the union of the
# shards is the whole file, byte for byte), the shard from the environment (Slurm,
# Kubernetes), restarts (done lines skipped, --force), never replacing a file
# (--overwrite; a single run's default name numbered as AUTOMATIC1111 does), malformed
# lines, --fail-fast, usage errors, and `ldmgen history merge` from the command line.
. tests/lib.sh
# an engine's variables from outside (CI under Slurm) must not pick a shard here
unset SLURM_ARRAY_TASK_ID SLURM_ARRAY_TASK_MIN SLURM_ARRAY_TASK_MAX SLURM_ARRAY_TASK_STEP \
      SLURM_ARRAY_TASK_COUNT JOB_COMPLETION_INDEX LDM_SHARD_COUNT
export OMP_NUM_THREADS=1   # the shards below run side by side on a small machine
B=bundle/default.ldmb
ABS_B="$PWD/$B"
ABS_GEN="$PWD/$GEN"; case "$GEN" in /*) ABS_GEN="$GEN";; esac
G="$GEN --bundle $B -n 2"
O="$TMP/o"
mkdir -p "$O/all" "$O/sh" "$O/j" "$O/num" "$O/one"

cat > "$TMP/p.txt" <<'EOF'
# five emoji (index 0..4 on lines 2, 4, 5, 6, 7)
red apple

smiling cat face
thumbs up
red heart
grinning face
EOF
PF=$(realpath "$TMP/p.txt")
NAMES="00-100-red_apple.png 01-101-smiling_cat_face.png 02-102-thumbs_up.png 03-103-red_heart.png 04-104-grinning_face.png"
count_png() { ls "$1" | grep -c '\.png$'; }
q() { sqlite3 "$1" "$2"; }

# ---- the whole file in one process ----
$G --prompts "$TMP/p.txt" --seed 100 --db "$TMP/all.db" -o "$O/all/{index:02}-{seed}-{prompt}.png" \
    > "$TMP/out" 2> "$TMP/err"; rc=$?
check "whole file: exit 0 ($(tail -n 2 "$TMP/err"))" test $rc -eq 0
check "whole file: says the shard and where it came from" grep -q '^ldmgen: shard 0/1 (the whole file' "$TMP/err"
check "whole file: 5 PNGs" test "$(count_png "$O/all")" -eq 5
for n in $NAMES; do test -s "$O/all/$n" || bad "whole file: $n missing"; done; ok
check "whole file: the files on stdout" test "$(wc -l < "$TMP/out")" -eq 5
check "whole file: summary" grep -qE 'shard 0/1: 5 done, 0 skipped, 0 failed of 5 prompts; 5 images in [0-9.]+ s \([0-9.]+ images/min\)' "$TMP/err"
check "whole file: base seed from --seed" grep -q 'base seed 100 (--seed)' "$TMP/err"
$G --seed 102 -o "$O/one/thumbs.png" -q "thumbs up"
check "a line's image is the single run's with seed base + index" cmp -s "$O/one/thumbs.png" "$O/all/02-102-thumbs_up.png"
check "rows: prompt_file and prompt_line" test "$(q "$TMP/all.db" "SELECT group_concat(prompt_line, ' ') FROM (SELECT prompt_line FROM generations WHERE prompt_file = '$PF' AND status = 'ok' ORDER BY prompt_line)")" = "2 4 5 6 7"
check "rows: a uuid each" test "$(q "$TMP/all.db" "SELECT count(DISTINCT uuid) FROM generations WHERE length(uuid) = 36")" -eq 5
"$GEN" history --db "$TMP/all.db" --json --limit 1 > "$TMP/j"
check "history --json shows uuid, prompt_file, prompt_line" grep -q "\"uuid\":\"[0-9a-f-]\{36\}\".*\"prompt_file\":\"$PF\",\"prompt_line\":7" "$TMP/j"

# ---- two shards side by side: together the whole file, the same bytes ----
for k in 0 1; do
    $G --prompts "$TMP/p.txt" --seed 100 --shard $k/2 --db "$TMP/s{shard}.db" \
        -o "$O/sh/{index:02}-{seed}-{prompt}.png" -q 2> "$TMP/serr$k" &
done
wait
check "shards: 5 PNGs together ($(cat "$TMP/serr0" "$TMP/serr1"))" test "$(count_png "$O/sh")" -eq 5
same=1; for n in $NAMES; do cmp -s "$O/all/$n" "$O/sh/$n" || same=0; done
check "shards: every image byte-identical to the unsharded run" test $same -eq 1
check "shards: {shard} in --db, one database each" test -s "$TMP/s0.db" -a -s "$TMP/s1.db" -a ! -e "$TMP/s{shard}.db"
check "shard 0/2 made entries 0, 2, 4" test "$(q "$TMP/s0.db" "SELECT group_concat(prompt_line, ' ') FROM (SELECT prompt_line FROM generations ORDER BY 1)")" = "2 5 7"
check "shard 1/2 made entries 1, 3" test "$(q "$TMP/s1.db" "SELECT group_concat(prompt_line, ' ') FROM (SELECT prompt_line FROM generations ORDER BY 1)")" = "4 6"
$G --prompts "$TMP/p.txt" --seed 100 --shard 1/2 --no-history -o "$O/x-{index}.png" --force 2> "$TMP/err" > /dev/null
check "shards sharing one database are warned about (none here: --no-history)" sh -c "! grep -q 'all record' '$TMP/err'"

# ---- the merge of the shards ----
"$GEN" history merge "$TMP/m.db" "$TMP/s0.db" "$TMP/s1.db" > "$TMP/out" 2> "$TMP/err"; rc=$?
check "merge: exit 0 ($(cat "$TMP/err"))" test $rc -eq 0
check "merge: says what it added" grep -q 's0.db: 3 generations added, 0 already' "$TMP/out"
check "merge: one ok row per line" test "$(q "$TMP/m.db" "SELECT count(*) || ' ' || count(DISTINCT prompt_line) FROM generations WHERE status = 'ok'")" = "5 5"
"$GEN" history merge -q "$TMP/m.db" "$TMP/s1.db" "$TMP/s0.db" > "$TMP/out"
check "merge again: nothing added" test "$(q "$TMP/m.db" "SELECT count(*) FROM generations")" -eq 5
"$GEN" history --db "$TMP/m.db" --check > "$TMP/out" 2>&1
check "merged: history --check ok" grep -q '^ok' "$TMP/out"
check "merged: PRAGMA integrity_check ok" test "$(q "$TMP/m.db" "PRAGMA integrity_check")" = ok
id=$(q "$TMP/m.db" "SELECT id FROM generations WHERE prompt = 'red heart'")
"$GEN" replay --db "$TMP/m.db" -o "$O/one/replayed.png" "$id" > "$TMP/out" 2>&1
check "merged: a row replays to identical bytes ($(cat "$TMP/out"))" grep -q 'identical to generation' "$TMP/out"
cp "$TMP/m.db" "$TMP/m.before"
printf 'plain text, not a database at all\n' > "$TMP/notdb.db"
expect_fail "merge: a non-database input is refused" 1 'notdb.db: not an SQLite database' "$GEN" history merge "$TMP/m.db" "$TMP/s0.db" "$TMP/notdb.db"
check "merge: refused, OUT untouched" cmp -s "$TMP/m.db" "$TMP/m.before"
cp "$TMP/s0.db" "$TMP/newer.db"; q "$TMP/newer.db" "PRAGMA user_version = 99"
expect_fail "merge: a newer schema is refused" 1 'schema version 99 is newer' "$GEN" history merge "$TMP/m.db" "$TMP/newer.db"
check "merge: still untouched" cmp -s "$TMP/m.db" "$TMP/m.before"
expect_fail "merge: into a file that is not a database" 1 'not an SQLite database' "$GEN" history merge "$TMP/notdb.db" "$TMP/s0.db"
check "merge: that file untouched" test "$(cat "$TMP/notdb.db")" = 'plain text, not a database at all'
expect_fail "merge: no input" 2 'expected OUT.db and at least one' "$GEN" history merge "$TMP/m.db"
check "merge: no temporary files left" sh -c "! ls '$TMP' | grep -q '\.tmp'"

# ---- restart: done lines are skipped, the rest redone ----
SH0="$G --prompts $TMP/p.txt --seed 100 --shard 0/2 --db $TMP/s{shard}.db"
cp "$O/sh/02-102-thumbs_up.png" "$TMP/thumbs.keep"
rm "$O/sh/02-102-thumbs_up.png"
$SH0 -o "$O/sh/{index:02}-{seed}-{prompt}.png" > "$TMP/out" 2> "$TMP/err"; rc=$?
check "restart: exit 0" test $rc -eq 0
check "restart: 1 done, 2 skipped ($(tail -n 1 "$TMP/err"))" grep -q '1 done, 2 skipped, 0 failed of 3' "$TMP/err"
check "restart: the missing image is back, the same bytes" cmp -s "$TMP/thumbs.keep" "$O/sh/02-102-thumbs_up.png"
check "restart: only it is printed" test "$(cat "$TMP/out")" = "$O/sh/02-102-thumbs_up.png"
$SH0 -o "$O/sh/{index:02}-{seed}-{prompt}.png" > /dev/null 2> "$TMP/err"
check "restart of a finished shard: all skipped" grep -q '0 done, 3 skipped, 0 failed' "$TMP/err"
$SH0 -o "$O/sh/{index:02}-{seed}-{prompt}.png" --force > /dev/null 2> "$TMP/err"
check "--force redoes all" grep -q '3 done, 0 skipped, 0 failed' "$TMP/err"
check "--force: the same bytes" cmp -s "$TMP/thumbs.keep" "$O/sh/02-102-thumbs_up.png"
cp "$O/sh/00-100-red_apple.png" "$TMP/apple.keep"
$SH0 -o "$O/sh/{index:02}-{seed}-{prompt}.png" -n 3 > /dev/null 2> "$TMP/err"; rc=$?
check "other parameters: not done, and the files are not replaced (exit $rc)" test $rc -eq 1
check "other parameters: each line names its file" grep -q "p.txt:2: .*00-100-red_apple.png exists; give --overwrite" "$TMP/err"
check "other parameters: 3 failed" grep -q '0 done, 0 skipped, 3 failed' "$TMP/err"
check "other parameters: file untouched" cmp -s "$TMP/apple.keep" "$O/sh/00-100-red_apple.png"
printf 'x' >> "$O/sh/04-104-grinning_face.png"
$SH0 -o "$O/sh/{index:02}-{seed}-{prompt}.png" > /dev/null 2> "$TMP/err"
check "a file changed since it was made is not done" grep -q "p.txt:7: .*04-104-grinning_face.png exists" "$TMP/err"
$SH0 -o "$O/sh/{index:02}-{seed}-{prompt}.png" --overwrite > /dev/null 2> "$TMP/err"
check "--overwrite redoes it in place" grep -q '1 done, 2 skipped, 0 failed' "$TMP/err"
check "--overwrite: the right bytes again" cmp -s "$O/sh/04-104-grinning_face.png" "$O/all/04-104-grinning_face.png"

# ---- JSON lines: options per line; malformed lines named, the others done ----
cat > "$TMP/q.jsonl" <<EOF
{"prompt": "red apple", "seed": 7, "steps": 3}
{"prompt": "cat", "steps": }

{"prompt": "thumbs up", "guidance": 1, "scheduler": "euler", "output": "$O/j/custom-{seed}.png"}
{"prompt": "red heart", "stpes": 1}
{"prompt": "grinning face", "batch": 2}
EOF
$G --prompts "$TMP/q.jsonl" --seed 100 --db "$TMP/q.db" -o "$O/j/{index:05}-{seed}.png" > "$TMP/out" 2> "$TMP/err"; rc=$?
check "jsonl: a failed line makes the exit status 1 (got $rc)" test $rc -eq 1
check "jsonl: the malformed line is named (file:line)" grep -q 'q.jsonl:2: not valid JSON' "$TMP/err"
check "jsonl: the unknown key is named" grep -q 'q.jsonl:5: unknown key "stpes"' "$TMP/err"
check "jsonl: the others are done" grep -q '3 done, 0 skipped, 2 failed of 5 prompts; 4 images' "$TMP/err"
check "jsonl: the last word is the count" test "$(tail -n 1 "$TMP/err")" = "ldmgen: 2 of 5 prompts failed"
check "jsonl: seed 7 from the line" test -s "$O/j/00000-7.png"
check "jsonl: a line's own output pattern, seed base + index" test -s "$O/j/custom-102.png"
check "jsonl: a batch of 2" test -s "$O/j/00004-104-0001.png" -a -s "$O/j/00004-104-0002.png"
$G --seed 7 -n 3 -o "$O/one/apple7.png" -q "red apple"
check "jsonl: the line's options (steps 3, seed 7) give the single run's bytes" cmp -s "$O/one/apple7.png" "$O/j/00000-7.png"
check "jsonl: guidance and scheduler from the line" grep -aq 'Steps: 2, Sampler: Euler, CFG scale: 1, Seed: 102' "$O/j/custom-102.png"
$G --prompts "$TMP/q.jsonl" --seed 100 --db "$TMP/q.db" -o "$O/j/{index:05}-{seed}.png" --fail-fast > /dev/null 2> "$TMP/err"; rc=$?
check "--fail-fast: stops at the first failure (exit $rc)" test $rc -eq 1
check "--fail-fast: the rest not run" grep -q '0 done, 1 skipped, 1 failed, 3 not run of 5' "$TMP/err"
check "--fail-fast: says why" grep -q 'stopped at the first failed line (--fail-fast); 3 of 5 prompts not run' "$TMP/err"

# ---- the shard from the environment (all lines malformed: nothing is generated) ----
printf '{"x": 0}\n{"x": 1}\n{"x": 2}\n{"x": 3}\n{"x": 4}\n{"x": 5}\n' > "$TMP/bad.jsonl"
E="$GEN --bundle $B --prompts $TMP/bad.jsonl --no-history"
lines_failed() { sed -n 's/^ldmgen: .*bad.jsonl:\([0-9]*\): .*/\1/p' "$TMP/err" | tr '\n' ' '; }
SLURM_ARRAY_TASK_ID=3 SLURM_ARRAY_TASK_MIN=1 SLURM_ARRAY_TASK_STEP=2 SLURM_ARRAY_TASK_COUNT=3 $E > /dev/null 2> "$TMP/err"
check "Slurm: --array=1-5:2 task 3 is shard 1/3" grep -q '^ldmgen: shard 1/3 (from a Slurm job array: SLURM_ARRAY_TASK_ID=3, SLURM_ARRAY_TASK_MIN=1, SLURM_ARRAY_TASK_STEP=2, SLURM_ARRAY_TASK_COUNT=3)' "$TMP/err"
check "Slurm: shard 1/3 runs indices 1 and 4 (lines 2, 5)" test "$(lines_failed)" = "2 5 "
JOB_COMPLETION_INDEX=1 LDM_SHARD_COUNT=2 $E > /dev/null 2> "$TMP/err"
check "Kubernetes: index 1, LDM_SHARD_COUNT=2" grep -q '^ldmgen: shard 1/2 (from a Kubernetes Indexed Job: JOB_COMPLETION_INDEX=1, count 2 from LDM_SHARD_COUNT)' "$TMP/err"
check "Kubernetes: indices 1, 3, 5" test "$(lines_failed)" = "2 4 6 "
JOB_COMPLETION_INDEX=2 $E --shard-count 3 > /dev/null 2> "$TMP/err"
check "Kubernetes: --shard-count" grep -q 'shard 2/3 (from a Kubernetes Indexed Job: JOB_COMPLETION_INDEX=2, count 3 from --shard-count' "$TMP/err"
JOB_COMPLETION_INDEX=1 SLURM_ARRAY_TASK_ID=0 SLURM_ARRAY_TASK_COUNT=4 $E --shard 1/3 > /dev/null 2> "$TMP/err"
check "--shard wins over the environment" grep -q '^ldmgen: shard 1/3 (from --shard)' "$TMP/err"
JOB_COMPLETION_INDEX=1 expect_fail "Kubernetes without a count: usage" 2 'JOB_COMPLETION_INDEX=1 .*--shard-count N or set LDM_SHARD_COUNT' $E
JOB_COMPLETION_INDEX=3 expect_fail "Kubernetes index >= count: usage" 2 'not below the shard count 3' $E --shard-count 3
SLURM_ARRAY_TASK_ID=x SLURM_ARRAY_TASK_COUNT=2 expect_fail "Slurm: a task id that is not a number" 2 'SLURM_ARRAY_TASK_ID="x"' $E
SLURM_ARRAY_TASK_ID=2 SLURM_ARRAY_TASK_MIN=0 SLURM_ARRAY_TASK_STEP=1 SLURM_ARRAY_TASK_COUNT=2 expect_fail \
    "Slurm: an id off the range" 2 'not one of the 2 tasks' $E
expect_fail "--shard-count without an index" 2 'no JOB_COMPLETION_INDEX' $E --shard-count 2

# ---- usage errors: exit 2, nothing written ----
mkdir -p "$O/u"
U="$G --prompts $TMP/p.txt --no-history"
expect_fail "--shard 2/2"   2 '--shard 2/2: K must be below N' $U --shard 2/2 -o "$O/u/{index}.png"
expect_fail "--shard 0/0"   2 '--shard 0/0: N must be at least 1' $U --shard 0/0 -o "$O/u/{index}.png"
expect_fail "--shard a/b"   2 '--shard "a/b": expected K/N' $U --shard a/b -o "$O/u/{index}.png"
expect_fail "--shard 1/x"   2 '--shard "1/x"' $U --shard 1/x -o "$O/u/{index}.png"
expect_fail "--shard 1"     2 '--shard "1": expected K/N' $U --shard 1 -o "$O/u/{index}.png"
expect_fail "--shard without --prompts" 2 '--shard applies to --prompts' $G --shard 0/2 "red apple"
expect_fail "--force without --prompts" 2 '--force applies to --prompts' $G --force "red apple"
expect_fail "--prompts and a prompt" 2 'no prompt argument' $U "red apple"
expect_fail "--prompts and --grid" 2 '--grid does not apply with --prompts' $U --grid g=1,2
expect_fail "unknown field" 2 'unknown field \{nope\}' $U -o "$O/u/{nope}.png"
expect_fail "a lone brace" 2 'without its \}' $U -o "$O/u/{index.png"
expect_fail "two lines, one name" 2 'lines 2 and 4 both write .*/u/same.png; put \{index\} in -o' $U -o "$O/u/same.png"
expect_fail "{id} per shard database without {shard} in -o" 2 'put \{shard\} in -o' \
    $G --prompts "$TMP/p.txt" --shard 0/2 --db "$TMP/u{shard}.db" -o "$O/u/{id}.png"
expect_fail "a missing prompt file" 1 'none.txt' $G --prompts "$TMP/none.txt" -o "$O/u/{index}.png"
printf '# only a comment\n\n' > "$TMP/empty.txt"
expect_fail "a prompt file without prompts" 1 'no prompts' $G --prompts "$TMP/empty.txt" -o "$O/u/{index}.png"
check "usage errors: nothing written" test -z "$(ls "$O/u")"

# ---- single runs: never replaced; the default name is numbered ----
( cd "$O/num" && for i in 1 2 3; do "$ABS_GEN" --bundle "$ABS_B" -n 1 --seed 1 --no-history "red apple"; done ) > "$TMP/out" 2> "$TMP/err"
check "default name: out.png, out-1.png, out-2.png ($(cat "$TMP/err"))" test "$(tr '\n' ' ' < "$TMP/out")" = "out.png out-1.png out-2.png "
check "default name: nothing replaced" cmp -s "$O/num/out.png" "$O/num/out-2.png"
( cd "$O/num" && for i in 1 2; do "$ABS_GEN" --bundle "$ABS_B" -n 1 --seed 1 --no-history -b 2 "red apple"; done ) > "$TMP/out" 2> "$TMP/err"
check "default name, batches: out-0001.png ..., then out-3-0001.png ..." test "$(tr '\n' ' ' < "$TMP/out")" = "out-0001.png out-0002.png out-3-0001.png out-3-0002.png "
( cd "$O/num" && "$ABS_GEN" --bundle "$ABS_B" -n 1 --seed 1 --no-history "red apple" ) > "$TMP/out" 2> "$TMP/err"
check "default name after a batch: out-4.png" test "$(cat "$TMP/out")" = "out-4.png"
$G --seed 1 -o "$O/one/mine.png" -q --no-history "red apple"
cp "$O/one/mine.png" "$TMP/mine.keep"
expect_fail "-o FILE that exists: refused" 1 'mine.png exists; give --overwrite to replace it' $G --seed 2 -o "$O/one/mine.png" --no-history "red apple"
check "-o FILE that exists: untouched" cmp -s "$O/one/mine.png" "$TMP/mine.keep"
check "-o FILE that exists: no numbered file instead" test ! -e "$O/one/mine-1.png"
$G --seed 2 -o "$O/one/mine.png" --overwrite -q --no-history "red apple"
check "--overwrite replaces it" sh -c "! cmp -s '$O/one/mine.png' '$TMP/mine.keep'"
$G --seed 5 -o "$O/one/s-{seed}-{id}.png" --db "$TMP/single.db" -q "red apple"
id=$(q "$TMP/single.db" "SELECT max(id) FROM generations")
check "-o {seed} and {id} in a single run" test -s "$O/one/s-5-$id.png"
check "{id}: the row names the file" test "$(q "$TMP/single.db" "SELECT output_path FROM generations WHERE id = $id")" = "$O/one/s-5-$id.png"
expect_fail "{id} without history: usage" 2 '\{id\} is the history id' $G --no-history -o "$O/one/{id}.png" "red apple"
expect_fail "{index} in a single run: usage" 2 '\{index\} is known only with --prompts' $G -o "$O/one/{index}.png" "red apple"
( cd "$O/one" && "$ABS_GEN" replay --db "$TMP/single.db" "$id" && "$ABS_GEN" replay --db "$TMP/single.db" "$id" ) > "$TMP/out" 2> "$TMP/err"
check "replay's default name is numbered too" grep -q "^replay-$id-1.png: identical" "$TMP/out"

finish
