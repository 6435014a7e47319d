#!/bin/sh
# tests/fuzz/run.sh - run the libFuzzer harnesses that `make fuzz-build` puts in build-fuzz/.
# Run from the repository root.
#
#   tests/fuzz/run.sh SECONDS [NAME...]   fuzz each harness for SECONDS, one after the other
#   tests/fuzz/run.sh --corpus [NAME...]  run each harness once over every input of its
#                                         committed corpus (tests/fuzz/corpus/NAME), no fuzzing
#
# NAMEs: safetensors bundle png tokenizer config image record (all when none is given).  Fuzzing starts
# from the committed corpus and from $FUZZ_WORK/corpus/NAME (default build-fuzz/corpus/NAME),
# where the new inputs it finds are kept; a crash is written to $FUZZ_WORK/artifacts/NAME/
# (add it to tests/fuzz/corpus/NAME once fixed).  Each harness prints one line:
#   fuzz NAME: ok, 123456 runs in 60 s, corpus 321 inputs
# or FAILED with the end of libFuzzer's log.  The exit status is 1 if any failed.
FUZZ_BUILD=${FUZZ_BUILD:-build-fuzz}
FUZZ_WORK=${FUZZ_WORK:-$FUZZ_BUILD}
mode=fuzz
if [ "$1" = "--corpus" ]; then mode=corpus; shift; else secs=${1:?usage: run.sh SECONDS|--corpus [NAME...]}; shift; fi
names=${*:-safetensors bundle png tokenizer config image record}
status=0
for n in $names; do
    bin=$FUZZ_BUILD/fuzz_$n
    seeds=tests/fuzz/corpus/$n
    [ -x "$bin" ] || { echo "fuzz $n: FAILED: $bin missing (make fuzz-build)"; status=1; continue; }
    mkdir -p "$FUZZ_WORK/corpus/$n" "$FUZZ_WORK/artifacts/$n"
    log=$FUZZ_WORK/fuzz-$n.log
    opts="-timeout=30 -rss_limit_mb=2048 -artifact_prefix=$FUZZ_WORK/artifacts/$n/"
    [ "$n" = bundle ] && opts="$opts -max_len=32768"
    start=$(date +%s)
    if [ $mode = corpus ]; then
        # shellcheck disable=SC2086
        "$bin" $opts "$seeds"/* >"$log" 2>&1
    else
        # shellcheck disable=SC2086
        "$bin" $opts -max_total_time="$secs" -print_final_stats=1 -dict="tests/fuzz/$n.dict" \
            "$FUZZ_WORK/corpus/$n" "$seeds" >"$log" 2>&1
    fi
    rc=$?
    took=$(($(date +%s) - start))
    if [ $mode = corpus ]; then
        runs=$(grep -c '^Executed ' "$log")
        what="$runs inputs of $seeds"
    else
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
        what="${runs:-?} runs in $took s, corpus $(ls "$FUZZ_WORK/corpus/$n" | wc -l) new inputs"
    fi
    if [ $rc -eq 0 ] && ! grep -qE '^==[0-9]+==ERROR|runtime error|^SUMMARY|deadly signal' "$log"; then
        echo "fuzz $n: ok, $what"
    else
        echo "fuzz $n: FAILED (exit $rc), $what; log $log:"
        grep -E 'ERROR|runtime error|SUMMARY|Test unit written|#[0-9]+ ' "$log" | head -n 20
        status=1
    fi
done
exit $status
