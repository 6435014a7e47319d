#!/usr/bin/env bash
# bench/run.sh - `make bench`: the CPU benchmark of issue 14, one table from one run.
#
#  1. build/bench-sd15r.ldmb: SD-1.5 shapes with deterministic random weights, made from the
#     configs in bench/sd15 by `ldmpack --random-weights` (no Python, no download; ~2 min)
#  2. the GEMM ceilings of this machine: PyTorch's matmul in fp32 (MKL) and bf16 (oneDNN),
#     when $PY has torch; OpenBLAS's sgemm (in bench_gemm) always
#  3. build/bench_gemm: ldm's products on the UNet's and the VAE's real shapes, fp32 and bf16
#  4. bench/bench_pipeline.sh: ldm fp32 and bf16 end to end at 256 and 512 (text, s/step,
#     VAE decode, load, peak private memory = RssAnon), next to diffusers (fp32, bf16) and
#     OpenVINO (fp32, bf16) when installed, and stable-diffusion.cpp when SDCPP is set
# Peers, when missing, are skipped with the line that says how to install them:
#   PY=/opt/curenv/bin/python: pip install torch diffusers transformers (the PyPI wheels:
#       MKL and oneDNN; then bench/make_sd15_model.py makes the diffusers folder build/bench-sd15)
#   OVPY=/opt/ovenv/bin/python: see bench/openvino_pipeline.py
#   SDCPP=path/to/sd-cli: stable-diffusion.cpp built with -DGGML_NATIVE=ON
# The machine must be quiet (no builds, tests or helpers): the script prints the load
# average first.  Environment: THREADS (default: nproc), SIZES ("256 512"), STEPS (3),
# OUTDIR (/tmp/ldm-bench), TOOLS (see bench_pipeline.sh).
set -u
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
THREADS=${THREADS:-$(nproc)}
OUTDIR=${OUTDIR:-/tmp/ldm-bench}
PY=${PY:-/opt/curenv/bin/python}
export THREADS OUTDIR PY
export SIZES=${SIZES:-"256 512"} STEPS=${STEPS:-3}
export BUNDLE=${BUNDLE:-$BUILD/bench-sd15r.ldmb} MODEL=${MODEL:-$BUILD/bench-sd15}
mkdir -p "$OUTDIR"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
if [ ! -f "$BUNDLE" ]; then
    echo "== making $BUNDLE (ldmpack --random-weights bench/sd15)"
    "$BUILD/ldmpack" --random-weights bench/sd15 -o "$BUNDLE" || exit 1
fi
if [ ! -d "$MODEL" ] && [ -x "$PY" ] && "$PY" -c 'import diffusers' 2>/dev/null; then
    echo "== making $MODEL (diffusers folder with random weights, for the peers)"
    "$PY" bench/make_sd15_model.py "$MODEL" || echo "could not make $MODEL: peers skipped"
fi
{
    echo "# make bench, $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'); $THREADS threads; flags:" \
         "$(grep -o -w -E 'avx2|avx512f|avx512_bf16|amx_bf16|amx_tile|avx512_fp16|fma|f16c' /proc/cpuinfo | sort -u | tr '\n' ' ')"
    echo
    echo '```'
    if [ -x "$PY" ] && "$PY" -c 'import torch' 2>/dev/null; then
        "$PY" bench/gemm_ceiling.py "$THREADS" 5
    else
        echo "GEMM ceilings with PyTorch skipped ($PY has no torch: pip install torch)"
    fi
    "$BUILD/bench_gemm" --threads "$THREADS" --reps 3 --precision fp32
    "$BUILD/bench_gemm" --threads "$THREADS" --reps 3 --precision bf16
    echo '```'
} > "$OUTDIR/gemm.md" 2>&1
cat "$OUTDIR/gemm.md"
bench/bench_pipeline.sh
echo "tables: $OUTDIR/gemm.md $OUTDIR/table.md"
