#!/bin/sh
# cli_threads.sh - an image is the same bytes whatever the thread count (1, 2, 3, 5):
# the products sum over k in blocks that depend on the shape only (backend/gemm_cpu.c), so
# that replay holds across machines with different core counts.  256x256 on the sd1 fixture makes the UNet's and the
# VAE's products large enough to be split; the sd2 fixture (linear projections, three
# levels) at 192x128; both text-to-image with classifier-free guidance and a batch of 2.
# The fixtures' products are small: code whose sums depended on the thread count could
# pass this too; the op-level test is tests/test_threads.c (SD-1.5-sized products, and the
# AVX2 and portable kernels against AVX-512).
. tests/lib.sh

B1="$TMP/sd1.ldmb"; B2="$TMP/sd2.ldmb"
"$PACK" -q "$FIX/models/sd1" -o "$B1" || bad "pack sd1"
"$PACK" -q "$FIX/models/sd2" -o "$B2" || bad "pack sd2"
for t in 1 2 3 5; do
    OMP_NUM_THREADS=$t "$GEN" --bundle "$B1" --no-history -q -n 3 -b 2 --seed 11 -W 256 -H 256 \
        --scheduler euler_a -o "$TMP/a$t.png" "a red cube" || bad "sd1 with $t threads"
    OMP_NUM_THREADS=$t "$GEN" --bundle "$B2" --no-history -q -n 3 --seed 4 -W 192 -H 128 \
        -o "$TMP/b$t.png" "a blue ball" || bad "sd2 with $t threads"
done
for t in 2 3 5; do
    check "sd1 256x256: $t threads give the bytes of 1" sh -c "cmp -s '$TMP/a1-0001.png' '$TMP/a$t-0001.png' && cmp -s '$TMP/a1-0002.png' '$TMP/a$t-0002.png'"
    check "sd2 192x128: $t threads give the bytes of 1" cmp -s "$TMP/b1.png" "$TMP/b$t.png"
done
# --threads N sets the count (OMP_NUM_THREADS not needed), with the same bytes
env -u OMP_NUM_THREADS "$GEN" --bundle "$B2" --no-history -q -n 3 --seed 4 -W 192 -H 128 --threads 4 \
    -o "$TMP/c4.png" "a blue ball" || bad "--threads 4"
check "--threads 4 gives the bytes of 1 thread" cmp -s "$TMP/b1.png" "$TMP/c4.png"
env -u OMP_NUM_THREADS taskset -c 0 "$GEN" --bundle "$B2" --no-history -q -n 3 --seed 4 -W 192 -H 128 \
    -o "$TMP/c1.png" "a blue ball" 2>"$TMP/err" || bad "one CPU by affinity: $(cat "$TMP/err")"
check "the default (the affinity mask's one CPU) gives the same bytes" cmp -s "$TMP/b1.png" "$TMP/c1.png"
expect_fail "--threads 0" 2 'threads "0"' "$GEN" --bundle "$B2" --threads 0 -o "$TMP/x.png" x
expect_fail "--threads many" 2 'threads "many"' "$GEN" --bundle "$B2" --threads many -o "$TMP/x.png" x
check "nothing written" test ! -e "$TMP/x.png"
finish
