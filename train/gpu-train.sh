#!/usr/bin/env bash
# gpu-train.sh - train the default emoji model on a lent GPU machine in one short run.
#
#   train/gpu-train.sh prepare          here: data set, captions, diffusers wheel -> .gpu-train/
#   train/gpu-train.sh run              on the GPU machine, from the repository root
#   train/gpu-train.sh collect DIR      here: DIR = the run's returned files (files_at)
#
# The device tool carries the working tree plus the paths named in `carry`, 64 MiB in all.
# The tracked tree is about 52 MB, 26 MB of it bundle/default.ldmb, which the run does not
# need: prepare deletes that file from the working tree (collect restores it from git), so
# the tree and .gpu-train (about 17 MB) fit. Between prepare and collect, do not commit.
#     run(command="train/gpu-train.sh run", carry=[".gpu-train"], timeout_s=540)
# run trains for LDM_TRAIN_MINUTES (default 7) of wall time in one process (VAE 20 %, then
# text encoder + UNet), then writes under $OUT: train.log, info.json, loss.csv and the
# diffusers folder (fp16 safetensors) as model.tar.00, model.tar.01, ... (parts just under 16 MiB; the
# tool returns at most 8 files of 16 MiB). A part set is written every 90 s, so a run cut
# short still returns a model. Without a GPU it fails at once, unless LDM_TRAIN_DEVICE=cpu
# (a dry run of the whole path with a tiny budget: LDM_TRAIN_MINUTES=1).
# collect joins the parts into build/emoji-model-gpu, packs build/default-gpu.ldmb with
# ldmpack, and measures it and the committed bundle with train/measure.py (same prompts,
# seeds and script), printing both summaries; replacing bundle/default.ldmb is then a choice
# made on those numbers (cp build/default-gpu.ldmb bundle/default.ldmb).
set -u
cd "$(dirname "$0")/.." || exit 1
P=${PYTHON:-/opt/curenv/bin/python}
STAGE=.gpu-train
DIFFUSERS=diffusers==0.42.1

case "${1:-}" in
prepare)
    set -e
    [ -x "$P" ] || { echo "gpu-train: $P not found (set PYTHON to a python with torch, diffusers, transformers, fonttools, uharfbuzz)" >&2; exit 1; }
    mkdir -p build/emoji-data "$STAGE"
    $P train/make_dataset.py --res 64 --variants 1 --out build/emoji-data/emoji64.npz
    $P -c "import sys; sys.path.insert(0, 'train'); import captions, train; \
captions.load_or_build('build/emoji-data/emoji64.npz', train.make_tokenizer())"
    cp build/emoji-data/emoji64.npz build/emoji-data/emoji64.npz.captions.npz "$STAGE/"
    rm -f "$STAGE"/*.whl
    $P -m pip download -q --no-deps --only-binary=:all: -d "$STAGE" "$DIFFUSERS"
    git ls-files --error-unmatch bundle/default.ldmb > /dev/null 2>&1 && rm -f bundle/default.ldmb
    tree_mb=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
    stage_mb=$(du -cb "$STAGE" | tail -1 | cut -f1)
    echo "gpu-train: working tree $((tree_mb / 1048576)) MiB + $STAGE $((stage_mb / 1048576)) MiB (limit 64 MiB)"
    ls -la "$STAGE"
    echo "gpu-train: bundle/default.ldmb is removed from the working tree for the run;"
    echo "           'train/gpu-train.sh collect DIR' (or 'git checkout -- bundle/default.ldmb') restores it."
    echo "gpu-train: now: run(command=\"train/gpu-train.sh run\", carry=[\"$STAGE\"], timeout_s=540)"
    ;;
run)
    OUT=${OUT:-/tmp/gpu-train-out}
    mkdir -p "$OUT"
    minutes=${LDM_TRAIN_MINUTES:-7}
    device=${LDM_TRAIN_DEVICE:-cuda}
    py=python3
    [ "$device" = cpu ] && py=$P
    {
        echo "== $(date -u +%FT%TZ) $(uname -n)"
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true
        ls -la "$STAGE" 2>&1
    } | tee "$OUT/env.log"
    [ -f "$STAGE/emoji64.npz" ] || { echo "gpu-train: $STAGE/emoji64.npz missing: run 'train/gpu-train.sh prepare' here and carry $STAGE" >&2; exit 1; }
    if ! $py -c "import diffusers" 2>/dev/null; then
        timeout 120 $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/gpu-train-site "$STAGE"/diffusers-*.whl >> "$OUT/env.log" 2>&1 || {
            echo "gpu-train: installing the diffusers wheel failed (see env.log)" >&2; exit 1; }
        export PYTHONPATH=/tmp/gpu-train-site${PYTHONPATH:+:$PYTHONPATH}
    fi
    $py -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'diffusers', diffusers.__version__, 'transformers', transformers.__version__)" 2>&1 | tee -a "$OUT/env.log"
    if [ "$device" != cpu ]; then
        $py -c "import torch; assert torch.cuda.is_available()" 2>/dev/null || {
            echo "gpu-train: no usable GPU here (LDM_TRAIN_DEVICE=cpu makes a dry run on the CPU)" >&2; exit 1; }
    fi
    batch=256; vbatch=128; threads=8; veval=4096
    if [ "$device" = cpu ]; then batch=8; vbatch=8; threads=2; veval=64; fi
    limit=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 + 75 }')
    timeout "$limit" $py train/train.py all --device "$device" --data "$STAGE/emoji64.npz" \
        --minutes "$minutes" --batch $batch --vae-batch $vbatch --vae-eval $veval --threads $threads \
        --work /tmp/gpu-train-work --logdir "$OUT" --out /tmp/gpu-train-work/emoji-model \
        --out-tar "$OUT/model.tar." --save-every 90 > "$OUT/stdout.log" 2>&1
    rc=$?
    tail -5 "$OUT/stdout.log"
    ls -la "$OUT"
    echo "gpu-train: train.py exit $rc"
    # stdout.log repeats train.log plus warnings; keep the returned files within 8
    [ "$rc" -eq 0 ] && rm -f "$OUT/stdout.log"
    exit $rc
    ;;
collect)
    set -e
    dir=${2:?usage: train/gpu-train.sh collect DIR}
    git checkout -- bundle/default.ldmb 2>/dev/null || true
    ls "$dir"/model.tar.* > /dev/null 2>&1 || { echo "gpu-train: no model.tar.* in $dir" >&2; exit 1; }
    rm -rf build/gpu-train && mkdir -p build/gpu-train
    cat "$dir"/model.tar.* | tar -x -C build/gpu-train
    rm -rf build/emoji-model-gpu && mv build/gpu-train/emoji-model build/emoji-model-gpu
    cp "$dir"/*.log "$dir"/*.json "$dir"/*.csv build/gpu-train/ 2>/dev/null || true
    make -s build/ldmpack build/ldmgen
    build/ldmpack build/emoji-model-gpu -o build/default-gpu.ldmb
    ls -la build/default-gpu.ldmb bundle/default.ldmb
    $P train/measure.py --bundle bundle/default.ldmb --out build/measure-before > /dev/null
    $P train/measure.py --bundle build/default-gpu.ldmb --out build/measure-after > /dev/null
    head -5 build/measure-before/report.md
    head -5 build/measure-after/report.md
    echo "gpu-train: sheets build/measure-{before,after}/sheet.png; logs in build/gpu-train/"
    ;;
*)
    echo "usage: train/gpu-train.sh prepare | run | collect DIR" >&2
    exit 2
    ;;
esac
