#!/usr/bin/env bash
# gpu-check.sh - check the CUDA backend on a lent GPU machine, in one short run.
#
#   scripts/gpu-check.sh prepare   here (no GPU needed): build with CUDA and stage .gpu/
#   scripts/gpu-check.sh run       on the GPU machine, from the repository root
#
# prepare builds libldm.a with CUDA, then links .gpu/test_backend_ops with only what it
# uses (--as-needed; OpenBLAS linked statically, since the GPU machine has neither
# libarchive nor, perhaps, OpenBLAS) and copies libgomp beside it in .gpu/lib.
# .gpu/ is ignored by git; name it in the run tool's carry list:
#     run(command="scripts/gpu-check.sh run", carry=[".gpu"], timeout_s=300)
# run prints the device, runs the op-by-op comparison of the CUDA backend against the
# CPU backend (tests/test_backend_ops.c, bounds stated there), then the benchmark table
# (CPU ms, CUDA ms, speed-up, GFLOP/s at Stable Diffusion sizes).  Exit status: 0 when
# both passed.  It needs about a minute of device time after the machine starts.
set -u
cd "$(dirname "$0")/.." || exit 1

case "${1:-}" in
prepare)
    set -e
    make -j2 CUDA=1 build/libldm.a build/tests/test_backend_ops
    nm build/libldm.a 2>/dev/null | grep -q ' T ldm_cuda_check' || {
        echo "gpu-check: build/libldm.a has no CUDA backend (is nvcc on PATH?)" >&2; exit 1; }
    mkdir -p .gpu/lib
    openblas_a="$(pkg-config --variable=libdir openblas)/libopenblas.a"
    [ -f "$openblas_a" ] || openblas_a="-lopenblas" # then the GPU machine must have it
    cuda_home="$(dirname "$(dirname "$(command -v nvcc)")")"
    cc -O2 -std=c11 -D_GNU_SOURCE -Wall -Wextra -fopenmp -Isrc -Itests -DLDM_CUDA \
        tests/test_backend_ops.c build/libldm.a -Wl,--as-needed $openblas_a \
        -L"$cuda_home/lib64" -lcudnn -lcublas -lcudart -lstdc++ -lm -lpthread \
        -o .gpu/test_backend_ops
    strip .gpu/test_backend_ops
    gomp=$(ldd .gpu/test_backend_ops | awk '$1 == "libgomp.so.1" {print $3}')
    [ -n "$gomp" ] && cp -L "$gomp" .gpu/lib/
    ls -la .gpu .gpu/lib
    echo "gpu-check: staged; on the GPU machine run: scripts/gpu-check.sh run (carry .gpu)"
    ;;
run)
    [ -x .gpu/test_backend_ops ] || {
        echo "gpu-check: .gpu/test_backend_ops missing: run 'scripts/gpu-check.sh prepare' here and carry .gpu" >&2
        exit 1; }
    export LDM_REQUIRE_CUDA=1 # no GPU found is a failure here, not a skip
    export LD_LIBRARY_PATH="/usr/local/cuda/lib64:$PWD/.gpu/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    echo "== device"
    nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv,noheader || true
    echo "== missing libraries (should be none)"
    ldd .gpu/test_backend_ops | grep 'not found' || true
    echo "== test_backend_ops (CUDA against CPU)"
    timeout 240 .gpu/test_backend_ops; rc_test=$?
    echo "== benchmark"
    timeout 240 .gpu/test_backend_ops --bench 5; rc_bench=$?
    echo "gpu-check: test exit $rc_test, bench exit $rc_bench"
    [ "$rc_test" -eq 0 ] && [ "$rc_bench" -eq 0 ]
    ;;
*)
    echo "usage: scripts/gpu-check.sh prepare|run" >&2
    exit 2
    ;;
esac
