#!/usr/bin/env bash
# gpu-check.sh - check and measure the CUDA backend on a lent GPU machine, in one run.
#
#   scripts/gpu-check.sh prepare   here (no GPU needed): build with CUDA, stage .gpu/
#   scripts/gpu-check.sh run       on the GPU machine, from the repository root
#
# prepare builds the library with CUDA (sm_75, sm_80, sm_86, sm_89, sm_90), links ldmgen,
# ldmpack, test_backend_ops, test_clip, test_unet, test_vae and gpu_fullsize with every
# library the GPU machine lacks linked statically (libarchive, sqlite, png, jpeg, jansson,
# utf8proc, zlib; scripts/gpu-archive-stubs.c says why some writers are stubs) and libgomp beside them, packs
# them into .gpu/stage.tar.xz, and adds the diffusers wheel for the baseline. The device
# tool carries the working tree plus `carry`, 64 MiB in all; the tracked tree is about
# 52 MB, 26 MB of it bundle/default.ldmb, which the run does not need: prepare deletes it
# from the working tree; `git checkout -- bundle/default.ldmb` restores it (do not commit
# in between).
#     run(command="scripts/gpu-check.sh run", carry=[".gpu"], timeout_s=540)
# run, each phase under its own timeout, full logs under $OUT, the summary printed last:
#   env       GPU, driver, CUDA runtime, cuBLAS and cuDNN versions, missing libraries
#   ops       tests/test_backend_ops.c: every op against the CPU backend (bounds there);
#             on failure again with CUDA_LAUNCH_BLOCKING=1 to name the kernel
#   models    test_clip, test_unet, test_vae on CUDA (LDM_TEST_BACKEND=cuda) against the
#             diffusers expectations, rel. L2 <= 1e-2
#   pipeline  ldmgen on the fixture bundles, one run per scheduler family, CUDA against
#             the CPU: 8-bit images within 8 levels max and 1 level mean; the same CUDA
#             run twice gives the same PNG bytes; the history names the GPU
#   fullsize  ldmpack --random-weights bench/sd15 (built there), tests/gpu_fullsize.c:
#             one UNet step at 64x64 latents against the CPU (rel. L2 <= 1e-2, no NaN or
#             Inf) and a 512x512 VAE decode (finite, rel. L2 <= 1e-2)
#   bench     ldmgen on that bundle, DDIM 50 steps, guidance 7.5, one image, 256x256 and
#             512x512: end to end, UNet ms/step, VAE, peak GPU memory (nvidia-smi);
#             then bench/diffusers_gpu.py, diffusers eager on the same shapes (and
#             torch.compile with LDM_GPU_COMPILE=1)
# $OUT gets env.log, ops.log, models.log, pipeline.log, fullsize.log, bench.log and
# summary.txt (the tool returns at most 8 files). Exit status 0 when every check passed (the benchmark measures, it does not gate).
# Without a GPU, run fails at once with the reason (after the env phase). LDM_GPU_CHECK_DRY=1
# runs every phase with the CPU backend standing in for CUDA (2 bench steps, 256x256 only,
# 32x32 latents in fullsize), to check this script here before device time is spent on it.
set -u
cd "$(dirname "$0")/.." || exit 1
STAGE=.gpu
DIFFUSERS=diffusers==0.42.1
BINS="ldmgen ldmpack tests/test_backend_ops tests/test_clip tests/test_unet tests/test_vae tests/gpu_fullsize"

case "${1:-}" in
prepare)
    set -e
    command -v nvcc > /dev/null || { echo "gpu-check: nvcc not on PATH" >&2; exit 1; }
    arch="-gencode arch=compute_75,code=sm_75 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_86,code=sm_86 -gencode arch=compute_89,code=sm_89 -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90"
    make -j2 CUDA=1 BUILD=build-gpu NVCC_ARCH="$arch" build-gpu/libldm.a build-gpu/ldmgen build-gpu/ldmpack \
        build-gpu/tests/test_backend_ops build-gpu/tests/test_clip build-gpu/tests/test_unet \
        build-gpu/tests/test_vae build-gpu/tests/gpu_fullsize
    nm build-gpu/libldm.a 2>/dev/null | grep -q ' ldm_backend_ops_cuda' || {
        echo "gpu-check: build-gpu/libldm.a has no CUDA backend" >&2; exit 1; }
    rm -rf "$STAGE" && mkdir -p "$STAGE/pkg/bin/tests" "$STAGE/pkg/lib"
    cuda_home="$(dirname "$(dirname "$(command -v nvcc)")")"
    cc -O2 -c scripts/gpu-archive-stubs.c -o build-gpu/gpu-archive-stubs.o
    static="build-gpu/gpu-archive-stubs.o -Wl,-Bstatic -larchive -lsqlite3 -lpng16 -ljansson -lutf8proc -ljpeg -lz -Wl,-Bdynamic"
    dyn="-L$cuda_home/lib64 -lcudnn -lcublas -lcudart -lstdc++ -lm -lpthread -ldl"
    cli="build-gpu/obj/cli/cli.o build-gpu/obj/cli/history.o build-gpu/obj/cli/merge.o build-gpu/obj/cli/prompts.o build-gpu/obj/cli/replay.o"
    for p in ldmgen ldmpack; do
        cc -fopenmp build-gpu/obj/cli/${p}_main.o $cli build-gpu/libldm.a -Wl,--as-needed $static $dyn \
            -o "$STAGE/pkg/bin/$p"
    done
    for t in test_backend_ops test_clip test_unet test_vae gpu_fullsize; do
        cc -O2 -std=c11 -D_GNU_SOURCE -fopenmp -Isrc -Itests -DLDM_CUDA tests/$t.c build-gpu/libldm.a \
            -Wl,--as-needed $static $dyn -o "$STAGE/pkg/bin/tests/$t"
    done
    strip "$STAGE"/pkg/bin/* "$STAGE"/pkg/bin/tests/* 2> /dev/null || true
    for lib in libgomp.so.1; do
        path=$(ldd "$STAGE/pkg/bin/ldmgen" | awk -v l="$lib" '$1 == l {print $3}')
        [ -n "$path" ] && cp -L "$path" "$STAGE/pkg/lib/"
    done
    tar -C "$STAGE/pkg" -cJf "$STAGE/stage.tar.xz" bin lib
    rm -rf "$STAGE/pkg"
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$STAGE" "$DIFFUSERS" ||
        echo "gpu-check: no diffusers wheel (the diffusers baseline will be skipped)" >&2
    git ls-files --error-unmatch bundle/default.ldmb > /dev/null 2>&1 && rm -f bundle/default.ldmb
    tree_b=$(git ls-files -z | xargs -0 du -cb 2> /dev/null | tail -1 | cut -f1)
    stage_b=$(du -cb "$STAGE" | tail -1 | cut -f1)
    ls -la "$STAGE"
    echo "gpu-check: working tree $((tree_b / 1048576)) MiB + $STAGE $((stage_b / 1048576)) MiB (limit 64 MiB)"
    echo "gpu-check: bundle/default.ldmb removed for the run; 'git checkout -- bundle/default.ldmb' restores it"
    echo "gpu-check: now: run(command=\"scripts/gpu-check.sh run\", carry=[\"$STAGE\"], timeout_s=540)"
    ;;
run)
    OUT=${OUT:-/tmp/gpu-check-out}
    mkdir -p "$OUT"
    W=/tmp/gpu-check
    rm -rf "$W" && mkdir -p "$W"
    summary=()
    fails=0
    note() { summary+=("$1"); }
    verdict() { # NAME RC: record a check's result
        if [ "$2" -eq 0 ]; then note "PASS $1"; else note "FAIL $1 (exit $2)"; fails=$((fails + 1)); fi
    }
    echo "== env" | tee "$OUT/env.log"
    {
        date -u +%FT%TZ
        nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>&1
        nvidia-smi 2>&1 | grep -m1 "CUDA Version" || true
        ls /usr/local/cuda/lib64/libcublas.so.* /usr/local/cuda/lib64/libcudart.so.* 2> /dev/null
        ldconfig -p 2> /dev/null | grep -m3 -E "libcudnn.so|libcublas.so" || true
        nproc
    } >> "$OUT/env.log" 2>&1
    [ -f "$STAGE/stage.tar.xz" ] || { echo "gpu-check: $STAGE/stage.tar.xz missing: run 'scripts/gpu-check.sh prepare' here and carry $STAGE" | tee -a "$OUT/env.log" >&2; exit 1; }
    python3 -c "import tarfile, sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])" "$STAGE/stage.tar.xz" "$W" ||
        { echo "gpu-check: cannot unpack $STAGE/stage.tar.xz" >&2; exit 1; }
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$W/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    B=$W/bin
    echo "missing libraries:" >> "$OUT/env.log"
    for b in $BINS; do ldd "$B/$b" | grep 'not found' | sed "s|^|  $b: |"; done >> "$OUT/env.log" 2>&1
    cat "$OUT/env.log"
    DEV=cuda STEPS=50 SIZES="256 512" LATENT=64
    if [ "${LDM_GPU_CHECK_DRY:-0}" = 1 ]; then
        DEV=cpu STEPS=2 SIZES=256 LATENT=32
        export LDM_TEST_CPU_AS_GPU=1
        echo "gpu-check: LDM_GPU_CHECK_DRY=1: the CPU backend stands in for CUDA"
    elif ! nvidia-smi -L > /dev/null 2>&1; then
        echo "gpu-check: no GPU here (nvidia-smi -L failed): nothing to check" >&2
        exit 1
    else
        export LDM_REQUIRE_CUDA=1 # no GPU found is a failure here, not a skip
    fi

    echo "== ops"
    timeout 120 "$B/tests/test_backend_ops" > "$OUT/ops.log" 2>&1
    rc=$?
    tail -3 "$OUT/ops.log"
    if [ $rc -ne 0 ]; then
        grep FAIL "$OUT/ops.log" | head -20
        echo "== again with CUDA_LAUNCH_BLOCKING=1" >> "$OUT/ops.log"
        CUDA_LAUNCH_BLOCKING=1 timeout 90 "$B/tests/test_backend_ops" > "$W/ops-blocking.log" 2>&1
        cat "$W/ops-blocking.log" >> "$OUT/ops.log"
        tail -3 "$W/ops-blocking.log"
    fi
    verdict "ops: CUDA against CPU, every op ($(grep -E '^[0-9]+ passed' "$OUT/ops.log" | head -1))" $rc

    echo "== models"
    : > "$OUT/models.log"
    for t in test_clip test_unet test_vae; do
        LDM_TEST_BACKEND=$DEV LDM_BUILD="$B" timeout 90 "$B/tests/$t" >> "$OUT/models.log" 2>&1
        rc=$?
        line=$(grep -E '^[0-9]+ passed' "$OUT/models.log" | tail -1)
        echo "$t: $line"
        grep -E 'rel L2' "$OUT/models.log" | tail -4
        verdict "models: $t on CUDA against diffusers, rel. L2 <= 1e-2 ($line)" $rc
    done
    grep FAIL "$OUT/models.log" | head -10

    echo "== pipeline"
    : > "$OUT/pipeline.log"
    db=$W/history.db
    pipe_rc=0
    i=0
    for spec in "sd1 ddim" "sd1 euler_a" "sd1 dpmpp_2m" "sd2 pndm" "sd1 euler"; do
        set -- $spec
        m=$1 s=$2 i=$((i + 1))
        bundle=$W/$m.ldmb
        [ -f "$bundle" ] || timeout 60 "$B/ldmpack" -q "tests/fixtures/models/$m" -o "$bundle" >> "$OUT/pipeline.log" 2>&1
        args=(--bundle "$bundle" --scheduler "$s" -n 12 -g 7.5 --seed $((40 + i)) --overwrite)
        timeout 60 "$B/ldmgen" "${args[@]}" --device cpu --no-history -q -o "$W/p$i-cpu.png" "a red cube on a table" >> "$OUT/pipeline.log" 2>&1
        r1=$?
        timeout 60 "$B/ldmgen" "${args[@]}" --device $DEV --db "$db" -q -o "$W/p$i-cuda.png" "a red cube on a table" >> "$OUT/pipeline.log" 2>&1
        r2=$?
        timeout 60 "$B/ldmgen" "${args[@]}" --device $DEV --no-history -q -o "$W/p$i-cuda2.png" "a red cube on a table" >> "$OUT/pipeline.log" 2>&1
        r3=$?
        if [ $r1 -ne 0 ] || [ $r2 -ne 0 ] || [ $r3 -ne 0 ]; then
            verdict "pipeline $m $s: ldmgen cpu/cuda/cuda exit $r1/$r2/$r3" 1
            pipe_rc=1
            continue
        fi
        cmp=$("$B/tests/gpu_fullsize" --compare "$W/p$i-cpu.png" "$W/p$i-cuda.png")
        read -r dmax dmean <<< "$cmp"
        same=1
        cmp -s "$W/p$i-cuda.png" "$W/p$i-cuda2.png" || same=0
        echo "$m $s: CUDA against CPU max $dmax levels, mean $dmean; run twice: $([ $same = 1 ] && echo same bytes || echo DIFFERENT bytes)"
        ok=$(awk -v m="$dmax" -v a="$dmean" 'BEGIN { print (m != "" && a != "" && m + 0 <= 8 && a + 0 <= 1) ? 0 : 1 }')
        verdict "pipeline $m $s: CUDA image within 8 levels max ($dmax), 1 mean ($dmean) of the CPU's" "$ok"
        verdict "pipeline $m $s: same PNG bytes on a second CUDA run" $((1 - same))
    done
    rec=$(python3 -c "import sqlite3, sys; print(' | '.join(map(str, sqlite3.connect(sys.argv[1]).execute('SELECT backend, isa FROM generations ORDER BY id DESC LIMIT 1').fetchone())))" "$db" 2>&1)
    echo "history: $rec"
    case "$DEV:$rec" in cuda:cuda*sm_* | cpu:cpu*) verdict "pipeline: the history records the backend and the GPU ($rec)" 0 ;;
        *) verdict "pipeline: the history records the backend and the GPU ($rec)" 1 ;; esac
    # replay of a CUDA generation on the CPU says it compares across backends
    timeout 60 "$B/ldmgen" replay --db "$db" --device cpu --no-history -o "$W/replay-cpu.png" 1 > "$W/replay.log" 2>&1
    cat "$W/replay.log" >> "$OUT/pipeline.log"
    if [ $DEV = cuda ]; then grep -q "comparing across backends" "$W/replay.log"; else grep -q "identical" "$W/replay.log" || [ ! -s "$W/replay.log" ]; fi
    verdict "pipeline: replay on the CPU of a CUDA generation reports the difference ($(head -c 200 "$W/replay.log" | tr '\n' ' '))" $?

    echo "== fullsize"
    t0=$(date +%s.%N)
    timeout 150 "$B/ldmpack" -q --random-weights bench/sd15 -o "$W/sd15r.ldmb" > "$OUT/fullsize.log" 2>&1
    rc=$?
    echo "ldmpack --random-weights bench/sd15: exit $rc in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}') s" | tee -a "$OUT/fullsize.log"
    if [ $rc -eq 0 ]; then
        timeout 150 "$B/tests/gpu_fullsize" "$W/sd15r.ldmb" $LATENT >> "$OUT/fullsize.log" 2>&1
        rc=$?
        grep -E "rel L2|ms" "$OUT/fullsize.log"
    fi
    verdict "fullsize: SD-1.5 UNet step and 512x512 VAE decode, CUDA against CPU ($(tail -1 "$OUT/fullsize.log"))" $rc

    echo "== bench"
    : > "$OUT/bench.log"
    if [ -f "$W/sd15r.ldmb" ]; then
        base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2> /dev/null | head -1)
        for s in $SIZES; do
            nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 50 > "$W/mem-$s.log" 2>&1 &
            smi=$!
            best=""
            for r in 1 2 3; do
                t0=$(date +%s.%N)
                timeout 60 "$B/ldmgen" --bundle "$W/sd15r.ldmb" --device $DEV --no-history --scheduler ddim \
                    -n $STEPS -g 7.5 --seed 42 -W $s -H $s -v --overwrite -o "$W/bench-$s.png" \
                    "a photo of an astronaut riding a horse" > "$W/bench-$s-$r.log" 2>&1
                rc=$?
                t=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.3f", b - a}')
                cat "$W/bench-$s-$r.log" >> "$OUT/bench.log"
                [ $rc -ne 0 ] && break
                line=$(grep '^time: ' "$W/bench-$s-$r.log")
                echo "ldm cuda ${s}x$s run $r: process $t s; $line" | tee -a "$OUT/bench.log"
                best="$line"
            done
            kill $smi 2> /dev/null
            wait $smi 2> /dev/null
            peak=$(grep -E '^[0-9]+$' "$W/mem-$s.log" | sort -n | tail -1)
            case "$peak:$base" in [0-9]*:[0-9]*) mem="$((peak - base)) MiB above idle" ;; *) mem="not measured" ;; esac
            if [ -n "$best" ]; then
                read -r samp dec tot <<< "$(sed -E 's/.*sampling ([0-9.]+) s, decode ([0-9.]+) s, total ([0-9.]+) s.*/\1 \2 \3/' <<< "$best")"
                note "bench ldm ${s}x$s: end to end $tot s, UNet $(awk -v x="$samp" -v s="$STEPS" 'BEGIN {printf "%.2f", x * 1000 / s}') ms/step (sampling incl. scheduler), VAE $(awk -v x="$dec" 'BEGIN {printf "%.1f", x * 1000}') ms, peak GPU memory $mem"
            else
                note "bench ldm ${s}x$s: failed (exit $rc, see bench.log)"
            fi
        done
    fi
    if [ $DEV = cpu ]; then
        note "bench diffusers: skipped (dry run)"
    elif [ -n "$(ls "$STAGE"/diffusers-*.whl 2> /dev/null)" ]; then
        timeout 60 python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$W/site" "$STAGE"/diffusers-*.whl >> "$OUT/bench.log" 2>&1
        flags=""
        [ "${LDM_GPU_COMPILE:-0}" = 1 ] && flags=--compile
        PYTHONPATH="$W/site${PYTHONPATH:+:$PYTHONPATH}" timeout 200 python3 bench/diffusers_gpu.py $flags \
            > "$W/diffusers.log" 2>&1
        cat "$W/diffusers.log" >> "$OUT/bench.log"
        grep '^diffusers' "$W/diffusers.log" | while read -r l; do echo "$l"; done
        while read -r l; do note "bench $l"; done < <(grep -E '^diffusers (eager|compile)' "$W/diffusers.log")
        tail -3 "$W/diffusers.log"
    else
        note "bench diffusers: skipped (no diffusers wheel in $STAGE)"
    fi

    echo "== summary"
    printf '%s\n' "${summary[@]}" | tee "$OUT/summary.txt"
    echo "gpu-check: $fails check(s) failed"
    [ $fails -eq 0 ]
    ;;
*)
    echo "usage: scripts/gpu-check.sh prepare|run" >&2
    exit 2
    ;;
esac
