#!/bin/sh
# cli_fuzz.sh - the libFuzzer harnesses (tests/fuzz/) as part of `make test`: build them
# with clang in build-fuzz/, run each over its committed corpus (the seeds, and the input
# of every bug that fuzzing or the hardening work found: this is their regression test),
# then fuzz each for FUZZ_CI_SECONDS (default 4) starting from that corpus.  New crashes
# are kept in build-fuzz/ci/artifacts/NAME/.  Without clang the script says so and skips.
. tests/lib.sh
FUZZ_CC=${FUZZ_CC:-clang}
NAMES="safetensors bundle png tokenizer config image record"
if ! command -v "$FUZZ_CC" >/dev/null 2>&1; then
    echo "SKIP: $FUZZ_CC not found: the fuzz harnesses were not built or run" \
         "(scripts/install-deps.sh installs clang and libclang-rt-14-dev)"
    finish
    exit $?
fi
if ! make -s -j1 fuzz-build FUZZ_CC="$FUZZ_CC" >"$TMP/build" 2>&1; then
    bad "make fuzz-build failed: $(tail -n 8 "$TMP/build")"
    finish
    exit $?
fi
# (make's own notes about the jobserver, when make test runs with -j, are not the compiler's)
check "fuzz build: no compiler warnings ($(grep -v '^make' "$TMP/build" | grep -m1 'warning:'))" \
    sh -c "! grep -v '^make' '$TMP/build' | grep -q 'warning:'"

# the seeds must be what they claim: the tiny bundle is valid, the crash inputs refused
check "seed vae-tiny.ldmb verifies" sh -c "'$PACK' --verify tests/fuzz/corpus/bundle/vae-tiny.ldmb >/dev/null"

for n in $NAMES; do
    out=$(tests/fuzz/run.sh --corpus "$n" 2>&1); rc=$?
    printf '%s\n' "$out"
    check "fuzz_$n: every input of tests/fuzz/corpus/$n" [ $rc -eq 0 ]
done

S=${FUZZ_CI_SECONDS:-4}
W=${FUZZ_BUILD:-build-fuzz}/ci
rm -rf "$W/corpus"
for n in $NAMES; do
    out=$(FUZZ_WORK="$W" tests/fuzz/run.sh "$S" "$n" 2>&1); rc=$?
    printf '%s\n' "$out"
    check "fuzz_$n: $S s of fuzzing from the corpus" [ $rc -eq 0 ]
done
finish
